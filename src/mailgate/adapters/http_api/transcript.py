"""An HTTP exchange as the admin sees it in the server test: ``> `` request lines, ``< ``
answer lines, ``*  `` notes; tokens, Authorization headers and pre-authenticated URLs
redacted."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

REDACTED = "<redacted>"
# Answers worth showing to support (Graph's request-id and date identify a request in
# Microsoft's logs; Retry-After explains a wait).
_SHOWN_HEADERS = ("request-id", "client-request-id", "retry-after", "location", "date")
_BODY_CHARS = 600


# Query parameters whose values are shown; any other value may be a credential (Graph's
# upload URLs carry their token as ``authtoken``).
_PLAIN_PARAMETERS = frozenset({"uploadType"})


def redact_url(url: str) -> str:
    """A URL with the values of its query parameters redacted, but for known harmless ones."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(
        f"{name}={value if name in _PLAIN_PARAMETERS else REDACTED}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def compact_body(body: bytes) -> str:
    """An answer's body on one line, shortened (JSON re-serialized without spaces)."""
    text = body.decode("utf-8", "replace")
    try:
        text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        text = " ".join(text.split())
    return text if len(text) <= _BODY_CHARS else text[:_BODY_CHARS] + " ..."


class HttpTranscript:
    """The lines of an HTTP exchange; ``limit`` 0 records nothing (delivery sessions)."""

    def __init__(self, limit: int = 200) -> None:
        self.lines: list[str] = []
        self._limit = limit
        self._secrets: set[str] = set()

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 4:
            self._secrets.add(value)

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def _add(self, line: str) -> None:
        if len(self.lines) < self._limit:
            self.lines.append(self.scrub(line))
        elif self._limit and len(self.lines) == self._limit:
            self.lines.append("*  (transcript truncated)")

    def note(self, text: str) -> None:
        self._add(f"*  {text}")

    def request(self, method: str, url: str, headers: dict[str, str], size: int) -> None:
        if not self._limit:
            return
        self._add(f"> {method} {redact_url(url)}")
        for name, value in headers.items():
            shown = f"Bearer {REDACTED}" if name.lower() == "authorization" else value
            self._add(f">   {_title(name)}: {shown}")
        if size:
            self._add(f">   ({size} bytes)")

    def response(self, response: httpx.Response) -> None:
        if not self._limit:
            return
        self._add(f"< {response.status_code} {response.reason_phrase}".rstrip())
        for name in _SHOWN_HEADERS:
            value = response.headers.get(name)
            if value is not None:
                shown = redact_url(value) if name == "location" else value
                self._add(f"<   {_title(name)}: {shown}")
        if response.status_code >= 300 and response.content:
            self._add(f"<   {compact_body(response.content)}")


def _title(name: str) -> str:
    """``content-type`` -> ``Content-Type`` (HTTP/2 lower-cases names; people read these)."""
    return "-".join(part.capitalize() for part in name.split("-"))
