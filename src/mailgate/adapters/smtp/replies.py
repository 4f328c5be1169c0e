"""SMTP replies: parsing, enhanced status codes, and the one classification of an outcome.

RFC 5321 4.2.1: 2xx/3xx success, 4xx transient, 5xx permanent. RFC 3463: the enhanced status
code ``class.subject.detail`` at the start of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.domain.messages import Outcome
from mailgate.domain.transport import FailureKind, Reply

# A refused login says nothing about the message: defer it while the credentials are fixed,
# as Postfix does by default (smtp_sasl_auth_soft_bounce = yes). The reply code stays visible.
AUTH_FAILURE_OUTCOME = Outcome.TEMPORARY


# RFC 3463: class.subject.detail, class 2, 4 or 5.
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s+|$)")


def parse_enhanced(text: str) -> tuple[str | None, str]:
    """Split an RFC 3463 enhanced status code off the start of a reply text."""
    match = _ENHANCED.match(text)
    if not match:
        return None, text
    return match.group(1), text[match.end() :]


def classify(code: int | None) -> Outcome:
    """RFC 5321 4.2.1: 2xx/3xx success, 4xx transient, 5xx permanent; no reply: transient."""
    if code is None:
        return Outcome.TEMPORARY
    if code < 400:
        return Outcome.DELIVERED
    if code < 500:
        return Outcome.TEMPORARY
    return Outcome.PERMANENT


@dataclass(frozen=True)
class SmtpReply(Reply):
    """A server reply as aiosmtplib hands it over (code and message), parsed once."""

    @classmethod
    def parse(cls, code: int | None, message: str) -> SmtpReply:
        code = code if code and code > 0 else None
        raw_lines = message.splitlines()
        if len(raw_lines) == 1:  # the usual reply, without the list work below
            enhanced, rest = parse_enhanced(raw_lines[0])
            return cls(code, enhanced, rest.strip())
        # Multi-line replies repeat the enhanced code on every line; keep the first.
        lines = [parse_enhanced(line) for line in raw_lines] or [(None, "")]
        enhanced = lines[0][0]
        text = " ".join(rest.strip() for _e, rest in lines).strip()
        return cls(code, enhanced, text)

    @property
    def outcome(self) -> Outcome:
        return classify(self.code)


@dataclass(frozen=True)
class RecipientReply:
    """What the server said about one recipient (its RCPT TO, then DATA if accepted)."""

    outcome: Outcome
    reply: SmtpReply | None


@dataclass
class SendResult:
    """What the server said about one message.

    ``outcome`` is DELIVERED only when every recipient was accepted and DATA succeeded;
    TEMPORARY when at least one recipient failed temporarily (retry those); otherwise
    PERMANENT. ``recipients`` has the outcome of every address. A ``dry_run`` send stops
    after RCPT TO: DELIVERED then means "would have been accepted". ``kind`` names a failure
    mailgate found before asking the server (``too_large``, ``smtputf8``).
    """

    outcome: Outcome
    reply: SmtpReply | None
    recipients: dict[str, RecipientReply]
    elapsed_ms: int
    step: str
    detail: str = ""
    kind: FailureKind | None = None

    @property
    def delivered(self) -> list[str]:
        return [a for a, r in self.recipients.items() if r.outcome is Outcome.DELIVERED]

    @property
    def temporary(self) -> list[str]:
        return [a for a, r in self.recipients.items() if r.outcome is Outcome.TEMPORARY]

    @property
    def permanent(self) -> list[str]:
        return [a for a, r in self.recipients.items() if r.outcome is Outcome.PERMANENT]
