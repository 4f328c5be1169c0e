"""The SMTP transport: every way of connecting, authenticating and sending, on aiosmtplib.

One ``SmtpSession`` is one SMTP connection that can carry many messages::

    session = await SmtpSession.open(server, token_provider=tokens, transcript=Transcript())
    result = await session.send("a@example.com", ["b@example.org"], raw_bytes)
    if not session.usable: ...   # the server dropped us (e.g. after a 421); open a new one
    await session.close()

Classification happens once, here (``Outcome``): a 2xx is delivered, a 4xx reply, a lost
connection or a timeout is temporary, a 5xx reply is permanent; per recipient when some are
refused. TLS problems and a refused login (even a 535) are temporary: they are about the
configuration, not the message. The caller alone decides whether to retry, hold or fail.

- ``SmtpSession.open`` raises ``TransportError`` (with the step, the reply and a ``kind`` that
  names the failure) when no usable session could be set up.
- ``SmtpSession.send`` returns a ``SendResult`` whenever the server answered about the
  message (even with a refusal); it raises ``TransportError`` when the connection broke or
  timed out before an answer (then ``usable`` is false).

Secrets never leave this module in clear: the transcript redacts AUTH payloads, and every
recorded line, step detail and error detail is scrubbed of the password and tokens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import os
import re
import socket
import ssl
import tempfile
import time
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiosmtplib
from aiosmtplib.auth import auth_login_encode, auth_plain_encode, auth_xoauth2_encode
from aiosmtplib.typing import Default, SMTPStatus

from mailgate.domain.messages import Outcome
from mailgate.ports import TokenProvider

if TYPE_CHECKING:
    from mailgate.schemas.email_server import ResolvedServer, TlsSettings

_T = TypeVar("_T")
STEPS = ("resolve", "connect", "tls", "ehlo", "auth", "mail_from", "rcpt_to", "data")
REDACTED = "<redacted>"


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
class SmtpReply:
    code: int | None
    enhanced: str | None
    text: str

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

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "enhanced": self.enhanced, "text": self.text}


@dataclass(frozen=True)
class RecipientResult:
    outcome: Outcome
    reply: SmtpReply | None


@dataclass
class SendResult:
    """What the server said about one message.

    ``outcome`` is DELIVERED only when every recipient was accepted and DATA succeeded;
    TEMPORARY when at least one recipient failed temporarily (retry those); otherwise
    PERMANENT. ``recipients`` has the outcome of every address. A ``dry_run`` send stops
    after RCPT TO: DELIVERED then means "would have been accepted".
    """

    outcome: Outcome
    reply: SmtpReply | None
    recipients: dict[str, RecipientResult]
    elapsed_ms: int
    step: str
    detail: str = ""
    kind: str | None = None

    @property
    def delivered(self) -> list[str]:
        return [a for a, r in self.recipients.items() if r.outcome is Outcome.DELIVERED]

    @property
    def temporary(self) -> list[str]:
        return [a for a, r in self.recipients.items() if r.outcome is Outcome.TEMPORARY]

    @property
    def permanent(self) -> list[str]:
        return [a for a, r in self.recipients.items() if r.outcome is Outcome.PERMANENT]


@dataclass(frozen=True)
class Step:
    step: str
    ok: bool
    ms: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "ok": self.ok, "ms": self.ms, "detail": self.detail}


class TransportError(Exception):
    """A session could not be set up, or the connection broke before the server answered.

    ``kind`` names the failure for hints and callers (``dns``, ``refused``, ``timeout``,
    ``network``, ``cert_untrusted``, ``hostname_mismatch``, ``cert_expired``, ``tls_failed``,
    ``starttls_missing``, ``auth_missing``, ``auth_mechanism_missing``,
    ``plaintext_auth_refused``, ``auth_failed``, ``oauth2_token``, ``no_token_provider``,
    ``disconnected``, ``reply``, ``protocol``). For ``oauth2_token`` the token provider's
    exception is ``__cause__``.
    """

    def __init__(
        self,
        outcome: Outcome,
        step: str,
        detail: str,
        *,
        reply: SmtpReply | None = None,
        kind: str = "reply",
    ) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.step = step
        self.detail = detail
        self.reply = reply
        self.kind = kind


# ---- pure helpers ---------------------------------------------------------------------------


def xoauth2_string(user: str, token: str) -> str:
    """The XOAUTH2 initial response: base64("user=" u "\\x01auth=Bearer " t "\\x01\\x01").

    https://developers.google.com/gmail/imap/xoauth2-protocol, and Microsoft's
    "Authenticate an IMAP, POP or SMTP connection using OAuth".
    """
    return auth_xoauth2_encode(user, token).decode("ascii")


def decode_xoauth2_challenge(text: str) -> dict[str, Any] | None:
    """Gmail answers a bad token with ``334 <base64 JSON>`` ({"status": "401", ...})."""
    try:
        data = json.loads(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        return None
    return data if isinstance(data, dict) else None


def needs_smtputf8(mail_from: str, rcpt_to: Sequence[str]) -> bool:
    """RFC 6531: non-ASCII in an envelope address needs the SMTPUTF8 extension."""
    return not all(a.isascii() for a in (mail_from, *rcpt_to))


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


def hint_for(step: str, kind: str | None, reply: SmtpReply | None) -> str | None:
    """Advice for known failures. ``None`` when there is nothing better to say."""
    simple = _KIND_HINTS.get(kind or "")
    if simple:
        return simple
    if reply is None or reply.code is None:
        return None
    code, enh, text = reply.code, reply.enhanced or "", reply.text.lower()
    if enh == "5.7.139":
        return (
            "SMTP AUTH is disabled for this mailbox (Microsoft 365). An Exchange admin can "
            "enable it: Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled "
            "$false, and check that security defaults do not block it."
        )
    if step == "auth" and code == 535:
        return (
            "The server rejected the credentials (535 "
            + (enh or "")
            + "). Check the user name and password; with Microsoft 365 or Gmail and "
            "multi-factor sign-in use an app password or OAuth2. For OAuth2, check that the "
            "mailbox in 'username' is the one that authorized the app and that the app has "
            "the SMTP.Send (or SMTP.SendAsApp) permission."
        )
    if code == 530 and ("starttls" in text or "tls" in text):
        return (
            "The server wants STARTTLS before anything else (530 5.7.0): set starttls to "
            "'required' or use protocol 'smtps'."
        )
    if code == 530 or enh == "5.7.57":
        return (
            "The server requires authentication before sending: configure a password or "
            "OAuth2 under authentication."
        )
    if enh == "5.7.60" or "sendasdenied" in text:
        return (
            "The mailbox is not allowed to send as this From address (SendAsDenied). Use the "
            "authenticated mailbox as from_address, or grant it 'Send As' permission."
        )
    if (enh in ("5.7.1", "5.7.64") and ("relay" in text or step == "rcpt_to")) or (
        "relay" in text and code >= 500
    ):
        return (
            "The server refuses to relay to this recipient: authenticate (authentication), or "
            "ask the mail administrator to allow relaying from mailgate's address."
        )
    if code == 552 or enh in ("5.3.4", "5.2.3") or "too large" in text or "too big" in text:
        return _KIND_HINTS["too_large"]
    if enh.startswith("5.1.") and step == "rcpt_to":
        return "The server does not know this recipient address; check it for typos."
    if enh.startswith("5.1.") and step == "mail_from":
        return "The server refuses this sender address; check message_defaults.from_address."
    if code in (421, 450, 451, 452) or 400 <= code < 500:
        return (
            f"A temporary problem at the server ({code}): try again later. Real mail is "
            "retried automatically."
        )
    return None


_KIND_HINTS = {
    "dns": "The host name does not resolve. Check the spelling of host and this machine's DNS.",
    "refused": (
        "Nothing accepts connections on this host and port. Check the port (587 for "
        "STARTTLS, 465 for smtps, 25 for relays) and any firewall in between."
    ),
    "timeout": (
        "The server did not answer in time. A firewall may drop the traffic, the port may be "
        "wrong (465 expects protocol 'smtps'), or the server is overloaded; timeouts are "
        "configurable under timeouts."
    ),
    "network": "The network connection failed; check the host, port and routing.",
    "cert_untrusted": (
        "The server's certificate is not trusted (self-signed or issued by an unknown CA). "
        "Add the issuing CA certificate (or the server certificate) in PEM form under "
        "tls.ca_certificates_pem instead of turning verification off."
    ),
    "hostname_mismatch": (
        "The certificate does not name this host. Use the host name the certificate was "
        "issued for (e.g. smtp.office365.com, not an IP address or alias)."
    ),
    "cert_expired": "The server's certificate has expired; the server's operator must renew it.",
    "tls_failed": (
        "The TLS handshake failed. If the server requires a client certificate, configure "
        "tls.client_certificate_pem and tls.client_key_pem; with port 465 use protocol 'smtps', "
        "with 587/25 use 'smtp' and STARTTLS."
    ),
    "tls_config": (
        "The TLS settings could not be loaded: check tls.ca_certificates_pem and the client "
        "certificate and key (PEM, the key unencrypted and matching the certificate)."
    ),
    "starttls_missing": (
        "The server does not offer STARTTLS. Use protocol 'smtps' if it expects implicit TLS "
        "(usually port 465); only if the network path is trusted set starttls to 'disabled'."
    ),
    "auth_missing": (
        "The server offers no authentication (AUTH) here. Many servers offer AUTH only after "
        "STARTTLS, or on port 587 rather than 25; or choose authentication 'none' for a relay "
        "that trusts mailgate's address."
    ),
    "auth_mechanism_missing": (
        "The server offers no authentication mechanism mailgate can use for this method "
        "(PLAIN or LOGIN for passwords, XOAUTH2 for OAuth2)."
    ),
    "plaintext_auth_refused": (
        "mailgate refuses to send credentials over an unencrypted connection. Use STARTTLS "
        "(starttls 'required') or 'smtps'."
    ),
    "oauth2_token": (
        "No OAuth2 access token could be obtained. Authorize the configuration again (or "
        "check the client secret for client credentials)."
    ),
    "no_token_provider": "OAuth2 is not available in this process; authorize the server first.",
    "too_large": (
        "The message is larger than the server accepts (SIZE). Send smaller attachments or "
        "raise the server's limit."
    ),
    "smtputf8": (
        "An address contains non-ASCII characters but the server does not support SMTPUTF8."
    ),
    "disconnected": (
        "The server closed the connection unexpectedly. It may limit connections or rates; "
        "real mail is retried automatically."
    ),
}


def _cert_error_kind(err: ssl.SSLCertVerificationError) -> str:
    # OpenSSL X509_V_ERR_*: 10 expired, 62/64 host name/IP mismatch; the rest: untrusted.
    code = getattr(err, "verify_code", None)
    if code == 10:
        return "cert_expired"
    if code in (62, 64):
        return "hostname_mismatch"
    return "cert_untrusted"


def _describe_ssl_error(err: ssl.SSLError) -> tuple[str, str]:
    if isinstance(err, ssl.SSLCertVerificationError):
        message = getattr(err, "verify_message", None) or err.reason or str(err)
        return _cert_error_kind(err), f"certificate verification failed: {message}"
    reason = err.reason or str(err)
    return "tls_failed", f"TLS handshake failed: {reason}"


def _find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _bare_host(host: str) -> str:
    """``[2001:db8::1]`` (RFC 3986 style, accepted by the schema) -> ``2001:db8::1``."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@functools.cache
def _default_helo_name() -> str:
    return socket.getfqdn()


def build_tls_context(tls: TlsSettings, client_key_pem: str | None) -> ssl.SSLContext:
    """System trust store plus the config's CA certificates; optional client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_certificates_pem:
        ctx.load_verify_locations(cadata=tls.ca_certificates_pem)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.client_certificate_pem and client_key_pem:
        # ssl loads a certificate chain only from files: a private 0700 directory, removed
        # right after loading.
        with tempfile.TemporaryDirectory(prefix="mailgate-tls-") as tmp:
            cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert_path.write_text(tls.client_certificate_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(client_key_pem)
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


# ---- the session ----------------------------------------------------------------------------


def _mechanism_missing(what: str, offered: list[str]) -> TransportError:
    listed = " ".join(offered).upper() or "none"
    return TransportError(
        Outcome.TEMPORARY, "auth", f"{what} (offered: {listed})", kind="auth_mechanism_missing"
    )


class _RecordingSMTP(aiosmtplib.SMTP):
    """aiosmtplib with every command and reply written to a ``Transcript``."""

    def __init__(self, transcript: Transcript, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transcript = transcript

    async def execute_command(
        self, *args: bytes, timeout: float | Literal[Default.token] | None = Default.token
    ) -> aiosmtplib.SMTPResponse:
        self.transcript.client(args)
        response = await super().execute_command(*args, timeout=timeout)
        self.transcript.server(response.code, response.message)
        return response

    async def mail(
        self,
        sender: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        if not is_plain_address(sender):
            return await super().mail(sender, options=options, encoding=encoding, timeout=timeout)
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(
            b"MAIL",
            b"FROM:<" + sender.encode("ascii") + b">",
            *(option.encode("ascii") for option in options or ()),
            timeout=timeout,
        )
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
        return response

    async def rcpt(
        self,
        recipient: str,
        /,
        *,
        options: Iterable[str] | None = None,
        encoding: str = "ascii",
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        if not is_plain_address(recipient):
            return await super().rcpt(
                recipient, options=options, encoding=encoding, timeout=timeout
            )
        await self._ehlo_or_helo_if_needed()
        response = await self.execute_command(
            b"RCPT",
            b"TO:<" + recipient.encode("ascii") + b">",
            *(option.encode("ascii") for option in options or ()),
            timeout=timeout,
        )
        if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
        return response

    async def starttls(self, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.transcript.client([b"STARTTLS"])
        response = await super().starttls(**kwargs)
        self.transcript.server(response.code, response.message)
        return response

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> aiosmtplib.SMTPResponse:
        self.transcript.client([b"DATA"])
        self.transcript.note(f"(message content, {len(message)} bytes)")
        wire = data_wire_form(message) if isinstance(message, bytes) else None
        if wire is None:
            response = await super().data(message, timeout=timeout)
        else:
            response = await self._data_wire(wire, timeout)
        self.transcript.server(response.code, response.message)
        return response

    async def _data_wire(
        self, wire: bytes, timeout: float | Literal[Default.token] | None
    ) -> aiosmtplib.SMTPResponse:
        """``SMTP.data`` for content already in wire form: the library's
        ``SMTPProtocol.execute_data_command`` without its two regular-expression passes over
        the whole message (about 0.1 ms per 10 KB), which a canonical message does not need.
        Mirrors aiosmtplib 5.x step by step (pinned < 6 in pyproject.toml)."""
        protocol = self.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        await self._ehlo_or_helo_if_needed()
        limit = self.timeout if timeout is Default.token else timeout
        try:
            lock = protocol._command_lock
            if lock is None:
                raise aiosmtplib.SMTPServerDisconnected("Server not connected")
            async with lock:
                # Mark a reply as expected before each write (as the library does), so data
                # arriving right after it is not discarded as unsolicited.
                protocol._response_pending = True
                protocol.write(b"DATA\r\n")
                start = await protocol.read_response(timeout=limit)
                if start.code != SMTPStatus.start_input:
                    raise aiosmtplib.SMTPDataError(start.code, start.message)
                protocol._response_pending = True
                protocol.write(wire)
                response = await protocol.read_response(timeout=limit)
                if response.code != SMTPStatus.completed:
                    raise aiosmtplib.SMTPDataError(response.code, response.message)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        return response


# An ASCII dot-atom addr-spec (RFC 5322 3.4.1) with a host-name domain: what the outbox
# stores after validation. aiosmtplib's quote_address (email.utils.parseaddr plus an
# injection check, about 7 us per call) returns such an address unchanged in angle brackets.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")


def is_plain_address(address: str) -> bool:
    """True when MAIL/RCPT can carry ``<address>`` as is; anything else (quoted local
    parts, domain literals, non-ASCII, display names) goes through aiosmtplib's parsing."""
    return _PLAIN_ADDRESS.fullmatch(address) is not None


def data_wire_form(message: bytes) -> bytes | None:
    """The bytes DATA sends for ``message`` (dot-stuffed, RFC 5321 4.5.2, and ended by
    ``.<CRLF>``) when it is already canonical: CRLF line ends only, ending with CRLF, as the
    outbox stores what it builds. ``None`` otherwise: the library then normalises it."""
    crlf = message.count(b"\r\n")
    if (
        not message.endswith(b"\r\n")
        or message.count(b"\n") != crlf
        or message.count(b"\r") != crlf
    ):
        return None
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class _Broken(Exception):
    """The connection broke (or timed out) during ``step``."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(step)
        self.step = step
        self.cause = cause


async def _in_step(step: str, awaitable: Awaitable[_T]) -> _T:
    try:
        return await awaitable
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise _Broken(step, exc) from exc


def _ms(since: float) -> int:
    return int((time.monotonic() - since) * 1000)


class _StepFailed(Exception):
    def __init__(self, error: TransportError) -> None:
        super().__init__(error.detail)
        self.error = error


@dataclass
class _StepState:
    detail: str = ""


@dataclass
class SmtpSession:
    """One open SMTP connection; create it with ``await SmtpSession.open(...)``."""

    server: ResolvedServer
    smtp: _RecordingSMTP
    transcript: Transcript
    steps: list[Step] | None
    token_provider: TokenProvider | None = None
    warnings: list[str] = field(default_factory=list)
    tls_info: str | None = None
    max_size: int | None = None
    _needs_rset: bool = False
    _broken: bool = False
    _tls_fresh: bool = False

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        server: ResolvedServer,
        *,
        token_provider: TokenProvider | None = None,
        transcript: Transcript | None = None,
        steps: list[Step] | None = None,
    ) -> SmtpSession:
        """Connect, secure, greet and authenticate; raise ``TransportError`` on failure.

        ``steps`` (optional) receives a ``Step`` for resolve, connect, tls, ehlo and auth,
        and later for mail_from, rcpt_to and data of every ``send``.
        """
        cfg = server.config
        transcript = transcript if transcript is not None else Transcript()
        transcript.add_secret(server.secrets.password)
        transcript.add_secret(server.secrets.client_secret)
        transcript.add_secret(server.secrets.client_key_pem)
        if cfg.authentication.method == "password" and cfg.authentication.username:
            transcript.add_secret(
                auth_plain_encode(
                    cfg.authentication.username, server.secrets.password or ""
                ).decode()
            )
        smtp = _RecordingSMTP(
            transcript,
            hostname=_bare_host(cfg.host),
            port=cfg.port or (465 if cfg.protocol == "smtps" else 587),
            # getfqdn() may wait for a reverse DNS lookup: off the event loop, once.
            local_hostname=cfg.helo_name or await asyncio.to_thread(_default_helo_name),
            timeout=cfg.timeouts.command_s,
            use_tls=False,
            start_tls=False,
        )
        session = cls(
            server=server,
            smtp=smtp,
            transcript=transcript,
            steps=steps,
            token_provider=token_provider,
        )
        try:
            await session._open()
        except _StepFailed as failed:
            smtp.close()
            raise failed.error from failed.error.__cause__
        except BaseException:
            smtp.close()
            raise
        return session

    def _record(self, step: Step) -> None:
        if self.steps is not None:
            self.steps.append(step)

    @contextmanager
    def _step(self, name: str, *, record_success: bool = True) -> Iterator[_StepState]:
        started = time.monotonic()
        state = _StepState()
        try:
            yield state
        except TransportError as err:
            err.detail = self.transcript.scrub(err.detail)
            self._record(Step(name, False, _ms(started), err.detail))
            raise _StepFailed(err) from err
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            translated = self._translate(name, exc)
            translated.detail = self.transcript.scrub(translated.detail)
            self._record(Step(translated.step, False, _ms(started), translated.detail))
            raise _StepFailed(translated) from exc
        if record_success:
            self._record(Step(name, True, _ms(started), self.transcript.scrub(state.detail)))

    def _translate(self, step: str, exc: BaseException) -> TransportError:
        """Turn an aiosmtplib/ssl/socket exception into a classified ``TransportError``."""
        cfg = self.server.config
        where = f"{cfg.host}:{cfg.port}"
        ssl_err = _find_cause(exc, ssl.SSLError)
        if isinstance(ssl_err, ssl.SSLError):
            kind, detail = _describe_ssl_error(ssl_err)
            return TransportError(Outcome.TEMPORARY, "tls", detail, kind=kind)
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
            reply = SmtpReply.parse(exc.code, exc.message)
            kind = "disconnected" if exc.code == 421 else "reply"
            return TransportError(reply.outcome, step, str(reply), reply=reply, kind=kind)
        if isinstance(exc, TimeoutError):
            limit = cfg.timeouts.connect_s if step == "connect" else cfg.timeouts.command_s
            return TransportError(
                Outcome.TEMPORARY,
                step,
                f"no answer from {where} within {limit:g} s",
                kind="timeout",
            )
        if _find_cause(exc, ConnectionRefusedError):
            return TransportError(
                Outcome.TEMPORARY, step, f"connection refused by {where}", kind="refused"
            )
        disconnected = isinstance(exc, aiosmtplib.SMTPServerDisconnected) or bool(
            _find_cause(exc, ConnectionError)
        )
        fresh_tls = self._tls_fresh or (step == "connect" and cfg.protocol == "smtps")
        if disconnected and fresh_tls:
            # TLS 1.3 servers check the client certificate after the handshake and then just
            # close (RFC 8446 4.4.2.4): the client sees an EOF, not a handshake error.
            return TransportError(
                Outcome.TEMPORARY,
                step,
                "the server closed the connection right after the TLS handshake; it may "
                "require a client certificate (tls.client_certificate_pem)",
                kind="tls_failed",
            )
        if disconnected:
            return TransportError(
                Outcome.TEMPORARY,
                step,
                f"the server closed the connection ({exc})",
                kind="disconnected",
            )
        os_err = _find_cause(exc, OSError)
        if isinstance(os_err, OSError):
            text = os_err.strerror or str(os_err)
            return TransportError(Outcome.TEMPORARY, step, f"{where}: {text}", kind="network")
        return TransportError(Outcome.TEMPORARY, step, str(exc), kind="protocol")

    async def _open(self) -> None:
        cfg = self.server.config
        host, port = _bare_host(cfg.host), cfg.port or (465 if cfg.protocol == "smtps" else 587)
        loop = asyncio.get_running_loop()
        with self._step("resolve") as st:
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                    cfg.timeouts.connect_s,
                )
            except socket.gaierror as exc:
                raise TransportError(
                    Outcome.TEMPORARY,
                    "resolve",
                    f"cannot resolve {host!r}: {exc.strerror}",
                    kind="dns",
                ) from exc
            except TimeoutError as exc:
                raise TransportError(
                    Outcome.TEMPORARY,
                    "resolve",
                    f"resolving {host!r} took longer than {cfg.timeouts.connect_s:g} s",
                    kind="dns",
                ) from exc
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
            st.detail = f"{host} -> {', '.join(addresses[:4])}"

        tls_context: ssl.SSLContext | None = None
        if cfg.protocol == "smtps" or cfg.starttls != "disabled":
            with self._step("tls", record_success=False):
                try:
                    tls_context = build_tls_context(cfg.tls, self.server.secrets.client_key_pem)
                except (ssl.SSLError, ValueError, OSError) as exc:
                    reason = getattr(exc, "reason", None) or type(exc).__name__
                    raise TransportError(
                        Outcome.TEMPORARY,
                        "tls",
                        f"the TLS settings cannot be used ({reason})",
                        kind="tls_config",
                    ) from exc
        if tls_context is not None and not cfg.tls.verify:
            self.warnings.append(
                "certificate verification is off (tls.verify: false): anyone on the network "
                "path could impersonate the server and read mail and credentials"
            )

        implicit_tls_started = time.monotonic()
        with self._step("connect") as st:
            self.transcript.note(f"connecting to {host}:{port} ({cfg.protocol})")
            try:
                greeting = await self.smtp.connect(
                    timeout=cfg.timeouts.connect_s,
                    use_tls=cfg.protocol == "smtps",
                    tls_context=tls_context if cfg.protocol == "smtps" else None,
                    validate_certs=True,
                )
            except aiosmtplib.SMTPConnectResponseError as exc:
                reply = SmtpReply.parse(exc.code, exc.message)
                self.transcript.server(exc.code, exc.message)
                raise TransportError(
                    reply.outcome, "connect", f"greeting refused: {reply}", reply=reply
                ) from exc
            except ssl.SSLError:
                raise
            except aiosmtplib.SMTPConnectError as exc:
                if _find_cause(exc, ssl.SSLError) is not None:
                    # TCP worked; the implicit TLS handshake did not: report it under tls.
                    self._record(Step("connect", True, _ms(implicit_tls_started), "TCP ok"))
                raise
            self.transcript.server(greeting.code, greeting.message)
            st.detail = str(SmtpReply.parse(greeting.code, greeting.message))

        with self._step("tls") as st:
            st.detail = await self._secure(tls_context)
        with self._step("ehlo") as st:
            if self.smtp.is_ehlo_or_helo_needed:
                await self._ehlo()
            self._tls_fresh = False
            st.detail = self._describe_extensions()
            size = self.smtp.esmtp_extensions.get("size", "")
            self.max_size = int(size) if size.isdigit() and int(size) > 0 else None
        with self._step("auth") as st:
            st.detail = await self._authenticate()

    async def _ehlo(self) -> None:
        try:
            await self.smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not self.smtp.is_connected:
                raise
            await self.smtp.helo()

    def _describe_extensions(self) -> str:
        ext = self.smtp.esmtp_extensions
        if not ext and self.smtp.last_helo_response is not None:
            return "HELO accepted (no ESMTP extensions)"
        parts = []
        for name, value in ext.items():
            parts.append(f"{name.upper()} {value}".strip() if name != "auth" else "")
        if self.smtp.server_auth_methods:
            parts.append("AUTH " + " ".join(m.upper() for m in self.smtp.server_auth_methods))
        return ", ".join(p for p in parts if p)

    async def _secure(self, tls_context: ssl.SSLContext | None) -> str:
        cfg = self.server.config
        if cfg.protocol == "smtps":
            self.tls_info = self._cipher()
            self.transcript.note(f"TLS established (implicit): {self.tls_info}")
            return f"implicit TLS: {self.tls_info}"
        if cfg.starttls == "disabled":
            self.warnings.append(
                "STARTTLS is disabled: mail"
                + (" and credentials" if cfg.authentication.method != "none" else "")
                + " travel unencrypted"
            )
            return "not used (starttls: disabled)"
        await self._ehlo()
        if not self.smtp.supports_extension("starttls"):
            if cfg.starttls == "required":
                raise TransportError(
                    Outcome.TEMPORARY,
                    "tls",
                    "STARTTLS is required but the server does not offer it",
                    kind="starttls_missing",
                )
            self.warnings.append("the server does not offer STARTTLS: the connection is plain")
            return "server offers no STARTTLS; continuing unencrypted (opportunistic)"
        assert tls_context is not None
        try:
            await self.smtp.starttls(
                tls_context=tls_context,
                server_hostname=_bare_host(cfg.host),
                timeout=cfg.timeouts.command_s,
            )
        except ssl.SSLError as exc:
            self.transcript.note("TLS handshake failed")
            self.smtp.close()
            raise exc
        self.tls_info = self._cipher()
        self._tls_fresh = True
        self.transcript.note(f"TLS established: {self.tls_info}")
        return f"STARTTLS: {self.tls_info}"

    def _cipher(self) -> str:
        try:
            cipher = self.smtp.get_transport_info("cipher")
        except aiosmtplib.SMTPServerDisconnected:
            return "TLS"
        if not cipher:
            return "TLS"
        name, version, _bits = cipher
        verified = "certificate verified" if self.server.config.tls.verify else "NOT verified"
        return f"{version} {name}, {verified}"

    @property
    def encrypted(self) -> bool:
        return self.tls_info is not None

    async def _authenticate(self) -> str:
        auth = self.server.config.authentication
        if auth.method == "none":
            return "not used (authentication: none)"
        if not self.encrypted:
            if self.server.config.starttls != "disabled":
                raise TransportError(
                    Outcome.TEMPORARY,
                    "auth",
                    "refusing to send credentials over an unencrypted connection",
                    kind="plaintext_auth_refused",
                )
            self.warnings.append("credentials are sent unencrypted (starttls: disabled)")
        if not self.smtp.supports_extension("auth"):
            raise TransportError(
                Outcome.TEMPORARY,
                "auth",
                "the server does not offer authentication (no AUTH in its EHLO reply)",
                kind="auth_missing",
            )
        offered = [m.lower() for m in self.smtp.server_auth_methods]
        user = auth.username or ""
        if auth.method == "password":
            password = self.server.secrets.password or ""
            if "plain" in offered:
                self.transcript.add_secret(auth_plain_encode(user, password).decode())
                reply = await self._auth_command(b"PLAIN", auth_plain_encode(user, password))
                mechanism = "PLAIN"
            elif "login" in offered:
                enc_user, enc_password = auth_login_encode(user, password)
                reply = await self._auth_command(b"LOGIN", enc_user)
                if reply.code == 334:
                    reply = await self._auth_continue(enc_password)
                mechanism = "LOGIN"
            else:
                raise _mechanism_missing("the server offers neither PLAIN nor LOGIN", offered)
            self._check_auth_reply(reply, mechanism)
            return f"{reply} ({mechanism} as {user})"
        return await self._xoauth2(user, offered)

    async def _xoauth2(self, user: str, offered: list[str]) -> str:
        if "xoauth2" not in offered:
            raise _mechanism_missing("the server does not offer XOAUTH2", offered)
        if self.token_provider is None:
            raise TransportError(
                Outcome.TEMPORARY,
                "auth",
                "no OAuth2 access token: the configuration has not been authorized",
                kind="no_token_provider",
            )
        reply: SmtpReply | None = None
        challenge: dict[str, Any] | None = None
        for attempt in (0, 1):
            token = await self._token(force_refresh=attempt == 1)
            payload = xoauth2_string(user, token)
            self.transcript.add_secret(token)
            self.transcript.add_secret(payload)
            reply = await self._auth_command(b"XOAUTH2", payload.encode("ascii"))
            challenge = None
            if reply.code == 334:
                # Gmail: the error comes as a base64 JSON challenge; an empty line fetches
                # the final 535 (https://developers.google.com/gmail/imap/xoauth2-protocol).
                challenge = decode_xoauth2_challenge(reply.text)
                reply = await self._auth_continue(b"")
            if reply.code != 535:
                break
        assert reply is not None
        extra = ""
        if challenge is not None:
            extra = f" (server says: status {challenge.get('status')}"
            if challenge.get("scope"):
                extra += f", scope {challenge.get('scope')}"
            extra += ")"
        if reply.code != 235:
            raise TransportError(
                AUTH_FAILURE_OUTCOME,
                "auth",
                f"{reply}{extra}",
                reply=reply,
                kind="auth_failed",
            )
        return f"{reply} (XOAUTH2 as {user})"

    async def _token(self, *, force_refresh: bool) -> str:
        assert self.token_provider is not None
        try:
            return await asyncio.wait_for(
                self.token_provider.access_token(force_refresh=force_refresh),
                self.server.config.timeouts.command_s,
            )
        except Exception as exc:
            raise TransportError(
                Outcome.TEMPORARY,
                "auth",
                f"could not get an OAuth2 access token: {exc}",
                kind="oauth2_token",
            ) from exc

    async def _auth_command(self, mechanism: bytes, payload: bytes) -> SmtpReply:
        response = await self.smtp.execute_command(b"AUTH", mechanism, payload)
        return SmtpReply.parse(response.code, response.message)

    async def _auth_continue(self, payload: bytes) -> SmtpReply:
        response = await self.smtp.execute_command(payload)
        return SmtpReply.parse(response.code, response.message)

    def _check_auth_reply(self, reply: SmtpReply, mechanism: str) -> None:
        if reply.code != 235:
            raise TransportError(
                AUTH_FAILURE_OUTCOME,
                "auth",
                f"{reply} ({mechanism})",
                reply=reply,
                kind="auth_failed" if reply.code == 535 else "reply",
            )

    # ---- sending ------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """False once the connection is gone (closed, broken, or dropped by the server)."""
        return not self._broken and self.smtp.is_connected

    async def send(
        self, mail_from: str, rcpt_to: Sequence[str], message: bytes, *, dry_run: bool = False
    ) -> SendResult:
        """Send one message over this session (see ``SendResult`` for the outcome rules).

        ``dry_run`` stops after RCPT TO and resets the transaction: nothing is sent.
        Raises ``TransportError`` if the connection breaks or times out before an answer.
        """
        started = time.monotonic()
        recipients = list(dict.fromkeys(rcpt_to))
        if not recipients:
            raise ValueError("no recipients")
        if not self.usable:
            raise TransportError(
                Outcome.TEMPORARY, "mail_from", "the session is closed", kind="disconnected"
            )
        try:
            return await self._send(started, mail_from, recipients, message, dry_run)
        except _Broken as broken:
            self._broken = True
            self.smtp.close()
            err = self._translate(broken.step, broken.cause)
            err.detail = self.transcript.scrub(err.detail)
            self._record(Step(broken.step, False, 0, err.detail))
            raise err from broken.cause

    def _result(
        self,
        started: float,
        step: str,
        recipients: dict[str, RecipientResult],
        reply: SmtpReply | None,
        detail: str = "",
        kind: str | None = None,
    ) -> SendResult:
        outcomes = {r.outcome for r in recipients.values()}
        if outcomes == {Outcome.DELIVERED}:
            overall = Outcome.DELIVERED
        elif Outcome.TEMPORARY in outcomes:
            overall = Outcome.TEMPORARY
        else:
            overall = Outcome.PERMANENT
        return SendResult(
            overall,
            reply,
            recipients,
            _ms(started),
            step,
            self.transcript.scrub(detail or (str(reply) if reply else "")),
            kind,
        )

    def _fail_all(
        self,
        started: float,
        step: str,
        recipients: list[str],
        outcome: Outcome,
        reply: SmtpReply | None,
        detail: str,
        kind: str | None = None,
    ) -> SendResult:
        self._record(Step(step, False, 0, detail))
        results = {a: RecipientResult(outcome, reply) for a in recipients}
        return self._result(started, step, results, reply, detail, kind)

    async def _send(
        self, started: float, mail_from: str, recipients: list[str], message: bytes, dry_run: bool
    ) -> SendResult:
        smtp = self.smtp
        if self._needs_rset:
            try:
                await _in_step("mail_from", smtp.rset())
            except aiosmtplib.SMTPResponseException as exc:
                reply = SmtpReply.parse(exc.code, exc.message)
                return self._fail_all(
                    started, "mail_from", recipients, reply.outcome, reply, f"RSET: {reply}"
                )
            self._needs_rset = False

        options: list[str] = []
        encoding = "ascii"
        if needs_smtputf8(mail_from, recipients):
            if not smtp.supports_extension("smtputf8"):
                return self._fail_all(
                    started,
                    "mail_from",
                    recipients,
                    Outcome.PERMANENT,
                    None,
                    "an address needs SMTPUTF8 (RFC 6531), which the server does not offer",
                    "smtputf8",
                )
            options.append("SMTPUTF8")
            encoding = "utf-8"
        if self.max_size is not None and len(message) > self.max_size:
            return self._fail_all(
                started,
                "mail_from",
                recipients,
                Outcome.PERMANENT,
                None,
                f"message of {len(message)} bytes exceeds the server's SIZE limit of "
                f"{self.max_size} bytes",
                "too_large",
            )
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(message)}")  # RFC 1870
        if not message.isascii() and smtp.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")  # RFC 6152

        t = time.monotonic()
        self._needs_rset = True
        try:
            response = await _in_step(
                "mail_from", smtp.mail(mail_from, options=options, encoding=encoding)
            )
        except aiosmtplib.SMTPResponseException as exc:
            reply = SmtpReply.parse(exc.code, exc.message)
            self._record(Step("mail_from", False, _ms(t), str(reply)))
            refused_all = {a: RecipientResult(reply.outcome, reply) for a in recipients}
            return self._result(started, "mail_from", refused_all, reply)
        self._record(
            Step("mail_from", True, _ms(t), str(SmtpReply.parse(response.code, response.message)))
        )

        t = time.monotonic()
        results: dict[str, RecipientResult] = {}
        for address in recipients:
            try:
                response = await _in_step("rcpt_to", smtp.rcpt(address, encoding=encoding))
            except aiosmtplib.SMTPResponseException as exc:
                reply = SmtpReply.parse(exc.code, exc.message)
                results[address] = RecipientResult(reply.outcome, reply)
                if not smtp.is_connected:
                    # e.g. 421: the server closed; the rest are not tried.
                    for rest in recipients:
                        results.setdefault(rest, RecipientResult(Outcome.TEMPORARY, reply))
                    break
            else:
                results[address] = RecipientResult(
                    Outcome.DELIVERED, SmtpReply.parse(response.code, response.message)
                )
        accepted = [a for a, r in results.items() if r.outcome is Outcome.DELIVERED]
        refused = [
            f"{a}: {r.reply}" for a, r in results.items() if r.outcome is not Outcome.DELIVERED
        ]
        rcpt_detail = f"{len(accepted)} of {len(recipients)} accepted"
        if refused:
            rcpt_detail += "; refused " + "; ".join(refused)
        self._record(Step("rcpt_to", bool(accepted), _ms(t), self.transcript.scrub(rcpt_detail)))
        if not accepted:
            first = next(iter(results.values())).reply
            return self._result(started, "rcpt_to", results, first, rcpt_detail)

        if dry_run:
            await _in_step("rcpt_to", smtp.rset())
            self._needs_rset = False
            return self._result(started, "rcpt_to", results, None, rcpt_detail)

        t = time.monotonic()
        try:
            response = await _in_step("data", smtp.data(message))
        except aiosmtplib.SMTPResponseException as exc:
            reply = SmtpReply.parse(exc.code, exc.message)
            self._record(Step("data", False, _ms(t), str(reply)))
            for address in accepted:
                results[address] = RecipientResult(reply.outcome, reply)
            return self._result(started, "data", results, reply)
        self._needs_rset = False
        reply = SmtpReply.parse(response.code, response.message)
        self._record(Step("data", True, _ms(t), str(reply)))
        for address in accepted:
            results[address] = RecipientResult(Outcome.DELIVERED, reply)
        return self._result(started, "data", results, reply)

    async def close(self) -> None:
        """QUIT politely (bounded by the command timeout), then drop the connection."""
        if self.smtp.is_connected and not self._broken:
            with suppress(aiosmtplib.SMTPException, OSError):
                await self.smtp.quit()
        self._broken = True
        self.smtp.close()
