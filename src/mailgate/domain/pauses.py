"""Provider quota and throttling answers, and what they mean: pause the configuration. Pure.

A reply that says "the mailbox has sent its daily quota" or "you send too fast" is about the
sending account, not about the message: every other message of the configuration would get
the same answer, and waiting delivers them all. Such a reply is a *pause*: the message is
deferred (never failed, and the attempt does not count toward its backoff), and the whole
configuration waits - every worker, every process - until the window passes: the peer's
``Retry-After`` when it gave one, an hour for a quota, otherwise a backoff that grows with
each consecutive pause. Then one message probes; if it goes through, the rest follows
(README "Provider limits, pauses and fairness").

``SMTP_RULES`` and ``HTTP_RULES`` are the one table of such answers, each row with the
provider's document it comes from. ``NOT_PAUSES`` lists answers that look alike but are
about one message or one recipient, or need an administrator rather than time; they stay
ordinary temporary or permanent failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class PauseKind(StrEnum):
    QUOTA = "quota"
    """A daily (or longer) sending quota is used up: pause for ``PausePolicy.quota``."""
    THROTTLED = "throttled"
    """The provider asks to slow down: pause for ``Retry-After`` or a growing backoff."""


@dataclass(frozen=True)
class PauseSignal:
    """The transport's verdict that an answer pauses the configuration."""

    kind: PauseKind
    rule: str
    """The name of the table row that matched (shown as the pause's reason)."""
    retry_after_s: float | None = None


@dataclass(frozen=True)
class SmtpRule:
    """One SMTP answer of the table. Every given field must match: ``codes`` the reply code,
    ``enhanced`` the RFC 3463 code (one ending in a dot is a prefix: ``"4.7."`` matches
    ``4.7.500``), ``text`` a case-insensitive regular expression searched in the text."""

    name: str
    kind: PauseKind
    source: str
    example: str
    codes: tuple[int, ...] = ()
    enhanced: tuple[str, ...] = ()
    text: str | None = None

    def matches(self, code: int | None, enhanced: str | None, text: str) -> bool:
        if self.codes and code not in self.codes:
            return False
        if self.enhanced and not (enhanced and any(_code_is(enhanced, e) for e in self.enhanced)):
            return False
        return self.text is None or re.search(self.text, text, re.IGNORECASE) is not None


def _code_is(enhanced: str, pattern: str) -> bool:
    # "4.7." is a class and subject (any detail); "5.2.2" is one code, not 5.2.251.
    return enhanced.startswith(pattern) if pattern.endswith(".") else enhanced == pattern


_MS_LIMITS = (
    "https://learn.microsoft.com/en-us/office365/servicedescriptions/"
    "exchange-online-service-description/exchange-online-limits#sending-limits-1"
)
_MS_SMTP_CHANGES = (
    "https://techcommunity.microsoft.com/t5/exchange-team-blog/"
    "changes-coming-to-the-smtp-authenticated-submission-client/ba-p/607825"
)
_MS_CONTINUOUS = (
    "https://learn.microsoft.com/en-us/Exchange/mail-flow-best-practices/"
    "continuous-error-throttling-smtp-auth-submissions"
)
_MS_AS = (
    "https://learn.microsoft.com/en-us/troubleshoot/exchange/email-delivery/ndr/"
    "fix-error-code-451-4-7-500-699-asxxx-in-exchange-online"
)
_MS_590 = (
    "https://learn.microsoft.com/en-us/troubleshoot/exchange/email-delivery/ndr/"
    "fix-error-code-5-1-90-in-exchange-online"
)
_MS_TERRL = "https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/tenant-external-recipient-rate-limit"
_MS_RATE = "https://learn.microsoft.com/en-us/exchange/mail-flow/message-rate-limits"
_GOOGLE_SMTP = "https://support.google.com/a/answer/3726730"
_GOOGLE_LIMITS = "https://support.google.com/a/answer/166852"
_SES = "https://docs.aws.amazon.com/ses/latest/dg/troubleshoot-smtp.html"
_RFC3463 = "https://www.rfc-editor.org/rfc/rfc3463#section-3.8"

SMTP_RULES: tuple[SmtpRule, ...] = (
    # ---- Microsoft Exchange Online (smtp.office365.com) --------------------------------------
    SmtpRule(
        "microsoft_submission_quota",
        PauseKind.QUOTA,
        _MS_LIMITS,
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to "
        "process message due to a permanent exception with message Cannot submit message.",
        text=r"SubmissionQuotaExceeded",
    ),
    SmtpRule(
        "microsoft_recipient_rate_limit",
        PauseKind.QUOTA,
        _MS_590,
        "550 5.1.90 Your message can't be sent because you've reached your daily limit for "
        "message recipients",
        enhanced=("5.1.90",),
    ),
    SmtpRule(
        "microsoft_tenant_external_recipient_limit",
        PauseKind.QUOTA,
        _MS_TERRL,
        "550 5.7.233 Your message can't be sent because your tenant has exceeded its daily "
        "limit for sending email to external recipients (tenant external recipient rate limit)",
        enhanced=("5.7.233",),
    ),
    SmtpRule(
        "microsoft_continuous_error_throttling",
        PauseKind.QUOTA,
        _MS_CONTINUOUS,
        "550 5.2.254 Sender throttled due to continuous too many recipients errors.",
        enhanced=("5.2.251", "5.2.252", "5.2.253", "5.2.254", "5.2.255"),
    ),
    SmtpRule(
        "microsoft_concurrent_connections",
        PauseKind.THROTTLED,
        _MS_SMTP_CHANGES,
        "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
        codes=(421, 432, 451, 452),
        text=r"sender thread limit exceeded|concurrent connection limit exceeded"
        r"|maximum number of concurrent (server )?connections",
    ),
    SmtpRule(
        "microsoft_server_busy",
        PauseKind.THROTTLED,
        _MS_AS,
        "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (AS761)",
        codes=(421, 450, 451, 452),
        enhanced=tuple(f"4.7.{n}" for n in range(500, 700)),
    ),
    SmtpRule(
        "exchange_submission_rate",
        PauseKind.THROTTLED,
        _MS_RATE,
        "421 4.4.2 Message submission rate for this client has exceeded the configured limit",
        text=r"submission rate .*exceeded",
    ),
    # ---- Google (smtp.gmail.com, smtp-relay.gmail.com) ---------------------------------------
    SmtpRule(
        "google_daily_sending_limit",
        PauseKind.QUOTA,
        _GOOGLE_LIMITS,
        "550 5.4.5 Daily user sending limit exceeded. For more information on Gmail sending "
        "limits go to https://support.google.com/a/answer/166852",
        enhanced=("5.4.5", "4.4.5"),
        text=r"daily|quota|limit",
    ),
    SmtpRule(
        "google_relay_peak_limit",
        PauseKind.THROTTLED,
        _GOOGLE_SMTP,
        "450 4.2.1 Peak SMTP relay limit exceeded for customer. This is a temporary error.",
        text=r"relay limit exceeded",
    ),
    SmtpRule(
        "google_rate_limited",
        PauseKind.THROTTLED,
        _GOOGLE_SMTP,
        "421 4.7.28 Gmail has detected an unusual rate of mail originating from your IP "
        "address. To protect our users from spam, mail sent from your IP address has been "
        "rate limited.",
        codes=(421, 451),
        enhanced=("4.7.28",),
    ),
    SmtpRule(
        "google_too_many_logins",
        PauseKind.THROTTLED,
        _GOOGLE_SMTP,
        "454 4.7.0 Too many login attempts, please try again later.",
        codes=(454,),
        text=r"too many login attempts",
    ),
    # ---- Amazon SES SMTP interface -------------------------------------------------------------
    SmtpRule(
        "ses_daily_quota",
        PauseKind.QUOTA,
        _SES,
        "454 Throttling failure: Daily message quota exceeded.",
        text=r"daily message quota exceeded",
    ),
    SmtpRule(
        "ses_sending_rate",
        PauseKind.THROTTLED,
        _SES,
        "454 Throttling failure: Maximum sending rate exceeded.",
        text=r"maximum sending rate exceeded",
    ),
    # ---- generic --------------------------------------------------------------------------------
    SmtpRule(
        "generic_4_7_throttling",
        PauseKind.THROTTLED,
        _RFC3463,
        "421 4.7.0 Try again later, closing connection.",
        codes=(421, 451),
        enhanced=("4.7.",),
    ),
    SmtpRule(
        "generic_rate_words",
        PauseKind.THROTTLED,
        _RFC3463,
        "450 4.7.1 Error: too many messages, rate limit exceeded",
        text=r"\brate[- ]limit|throttl|too many (messages|connections|mails)"
        r"|sending (quota|limit) (exceeded|reached)",
    ),
)
"""Quota and throttling answers of SMTP servers; the first matching row wins (after
``NOT_PAUSES``)."""

NOT_PAUSES: tuple[SmtpRule, ...] = (
    SmtpRule(
        "recipient_mailbox_full",
        PauseKind.THROTTLED,
        "https://www.rfc-editor.org/rfc/rfc3463#section-3.3",
        "452 4.2.2 The email account that you tried to reach is over quota.",
        enhanced=("4.2.2", "5.2.2"),
    ),
    SmtpRule(
        "recipient_receiving_too_fast",
        PauseKind.THROTTLED,
        _GOOGLE_SMTP,
        "450 4.2.1 The user you are trying to contact is receiving mail too quickly.",
        text=r"user you are trying to contact",
    ),
    SmtpRule(
        "too_many_recipients_in_message",
        PauseKind.THROTTLED,
        "https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/"
        "non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online",
        "452 4.5.3 Too many recipients",
        enhanced=("4.5.3", "5.5.3"),
    ),
    SmtpRule(
        "greylisting",
        PauseKind.THROTTLED,
        "https://www.rfc-editor.org/rfc/rfc6647#section-2.1",
        "451 4.7.1 Greylisting in action, please come back later",
        text=r"gr[ea]y-?list",
    ),
    SmtpRule(
        "tls_requirement",
        PauseKind.THROTTLED,
        "https://learn.microsoft.com/en-us/troubleshoot/exchange/email-delivery/ndr/"
        "fix-error-code-421-4-7-66-in-exchange-online",
        "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to "
        "support TLS 1.2.",
        text=r"\bTLS\b|whitelist|allowlist",
    ),
)
"""Answers the rows above would catch that are not about the sending account: the
recipient's mailbox is full, one recipient receives too fast, one message has too many
recipients (the rest are tried in the next attempt), greylisting (one sender, recipient and
address, RFC 6647: the retry of that message passes), or the client must change (TLS)."""


@dataclass(frozen=True)
class HttpRule:
    name: str
    kind: PauseKind
    source: str
    statuses: tuple[int, ...] = ()
    reasons: frozenset[str] = frozenset()
    """Error codes or reasons in the API's error body (Graph ``error.code``, Google
    ``errors[].reason``); a row with both needs both."""


_GRAPH_THROTTLING = "https://learn.microsoft.com/en-us/graph/throttling"
_GMAIL_ERRORS = "https://developers.google.com/gmail/api/guides/handle-errors"

HTTP_RULES: tuple[HttpRule, ...] = (
    HttpRule(
        "graph_quota",
        PauseKind.QUOTA,
        "https://learn.microsoft.com/en-us/graph/api/resources/mail-api-overview",
        reasons=frozenset({"ErrorQuotaExceeded", "ErrorSubmissionQuotaExceeded"}),
    ),
    HttpRule(
        "google_daily_limit",
        PauseKind.QUOTA,
        _GMAIL_ERRORS,
        reasons=frozenset({"dailyLimitExceeded", "quotaExceeded"}),
    ),
    HttpRule(
        "google_rate_limit",
        PauseKind.THROTTLED,
        _GMAIL_ERRORS,
        reasons=frozenset(
            {
                "rateLimitExceeded",
                "userRateLimitExceeded",
                "concurrentLimitExceeded",
                "RESOURCE_EXHAUSTED",
            }
        ),
    ),
    HttpRule("http_429", PauseKind.THROTTLED, _GRAPH_THROTTLING, statuses=(429,)),
)
"""Quota and throttling answers of the HTTP mail APIs (Microsoft Graph, Gmail API). ``503``
and ``504`` are not here: the service is unwell, not the mailbox over a limit; they stay
temporary failures of the message (with their ``Retry-After``)."""


def classify_smtp(code: int | None, enhanced: str | None, text: str) -> PauseSignal | None:
    """The pause an SMTP reply means, or ``None`` (2xx/3xx never pause)."""
    if code is None or code < 400:
        return None
    for rule in NOT_PAUSES:
        if rule.matches(code, enhanced, text):
            return None
    for rule in SMTP_RULES:
        if rule.matches(code, enhanced, text):
            return PauseSignal(rule.kind, rule.name)
    return None


def classify_http(
    status: int, reasons: set[str] | frozenset[str], retry_after_s: float | None = None
) -> PauseSignal | None:
    """The pause an HTTP mail API's answer means, or ``None``."""
    if status < 400:
        return None
    for rule in HTTP_RULES:
        if rule.statuses and status not in rule.statuses:
            continue
        if rule.reasons and not rule.reasons & reasons:
            continue
        return PauseSignal(rule.kind, rule.name, retry_after_s)
    return None


@dataclass(frozen=True)
class PausePolicy:
    """How long a configuration pauses (README "Provider limits, pauses and fairness")."""

    quota: timedelta = timedelta(hours=1)
    """A quota answer without ``Retry-After``: wait this long, then probe with one message."""
    backoff: timedelta = timedelta(minutes=1)
    """The first throttling pause without ``Retry-After``; doubled for each consecutive one."""
    cap: timedelta = timedelta(hours=1)
    """The longest backoff."""
    max_retry_after: timedelta = timedelta(hours=24)
    """A ``Retry-After`` beyond this is cut to it (the administrator can resume earlier)."""

    def window(self, signal: PauseSignal, consecutive: int) -> timedelta:
        """How long to pause; ``consecutive`` counts this pause (1 for the first since the
        configuration last delivered)."""
        if signal.retry_after_s is not None:
            seconds = min(max(signal.retry_after_s, 1.0), self.max_retry_after.total_seconds())
            return timedelta(seconds=seconds)
        if signal.kind is PauseKind.QUOTA:
            return self.quota
        doubled = self.backoff.total_seconds() * 2 ** max(consecutive - 1, 0)
        return timedelta(seconds=min(doubled, self.cap.total_seconds()))


def describe_pause(signal: PauseSignal) -> str:
    """The pause's reason as the administrator reads it."""
    if signal.kind is PauseKind.QUOTA:
        return f"the provider says the sending quota is used up ({signal.rule})"
    return f"the provider is throttling ({signal.rule})"
