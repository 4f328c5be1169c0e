"""The SMTP dialogue as the admin sees it: ``C: ...`` / ``S: ...`` / ``*  ...`` lines with every
credential redacted (AUTH payloads, challenge answers, and any registered secret)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

REDACTED = "<redacted>"


class Transcript:
    """The SMTP dialogue as lines ``C: ...`` / ``S: ...`` / ``*  ...``, with secrets redacted.

    AUTH arguments and every client line answering a ``334`` challenge are replaced by
    ``<redacted>``; on top of that any registered secret (and its base64 form) is scrubbed
    from every line.
    """

    def __init__(self, limit: int = 500) -> None:
        self.lines: list[str] = []
        self._limit = limit
        self._secrets: set[str] = set()
        self._in_auth = False

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self._secrets.add(value)
            self._secrets.add(base64.b64encode(value.encode()).decode())

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def _add(self, line: str) -> None:
        if len(self.lines) < self._limit:
            self.lines.append(self.scrub(line))
        elif len(self.lines) == self._limit:
            self.lines.append("*  (transcript truncated)")

    @property
    def _full(self) -> bool:
        # Past the limit and its "truncated" note nothing is kept: skip the formatting (a
        # long-lived delivery session sends thousands of commands).
        return len(self.lines) > self._limit

    def client(self, args: Sequence[bytes]) -> None:
        if not self._full:
            self._add("C: " + redact_command(args, in_auth=self._in_auth))
        if args and args[0].upper() == b"AUTH":
            self._in_auth = True

    def server(self, code: int, message: str) -> None:
        if code != 334:
            self._in_auth = False
        if self._full:
            return
        if not 200 <= code <= 599:
            # A peer that does not speak SMTP (a port scan aimed through a configuration):
            # its bytes are none of the tenant's business.
            self._add("S: (an answer that is not an SMTP reply; not shown)")
            return
        lines = message.splitlines() or [""]
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            self._add(f"S: {code}{sep}{line}".rstrip())

    def note(self, text: str) -> None:
        if not self._full:
            self._add(f"*  {text}")


def redact_command(args: Sequence[bytes], *, in_auth: bool) -> str:
    """A client command for the transcript: AUTH payloads and challenge answers redacted."""
    if in_auth:
        # RFC 4954: a line answering a 334 challenge is an AUTH payload ("*" cancels).
        line = b" ".join(args)
        return "(empty line)" if not line else ("*" if line == b"*" else REDACTED)
    if args and args[0].upper() == b"AUTH":
        shown = [a.decode("ascii", "replace") for a in args[:2]]
        if len(args) > 2:
            shown.append(REDACTED)
        return " ".join(shown)
    return b" ".join(args).decode("utf-8", "replace")
