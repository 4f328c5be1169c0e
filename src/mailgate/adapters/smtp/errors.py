"""The SMTP transport's one exception, and how library, socket and TLS errors become it.

::

    Exception
     └── TransportError      a session could not be set up, or the connection broke or timed
                             out before the server answered; ``outcome`` (temporary or
                             permanent), ``step``, ``detail`` (scrubbed of secrets),
                             ``reply`` and ``kind`` (a ``FailureKind``); ``possibly_delivered``
                             when it happened after the final dot

A server's refusal of a message is not an exception: ``SmtpSession.send`` returns it in a
``SendResult``.
"""

from __future__ import annotations

import ssl

import aiosmtplib

from mailgate.adapters.smtp.replies import SmtpReply
from mailgate.adapters.smtp.tls import describe_ssl_error
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import Failure, FailureKind


class TransportError(Exception):
    """A session could not be set up, or the connection broke before the server answered.

    ``kind`` names the failure for hints and callers. For ``FailureKind.OAUTH2_TOKEN`` the
    token provider's exception is ``__cause__``.
    """

    def __init__(
        self,
        outcome: Outcome,
        step: str,
        detail: str,
        *,
        reply: SmtpReply | None = None,
        kind: FailureKind = FailureKind.REPLY,
    ) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.step = step
        self.detail = detail
        self.reply = reply
        self.kind = kind
        self.possibly_delivered = False
        """The connection broke or timed out after the whole message went out: the server
        may have accepted it."""

    @property
    def failure(self) -> Failure:
        return Failure(self.step, self.kind, self.reply, self.detail)


def find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first of its causes (a few levels deep) that is a ``kind``."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def translate(
    step: str,
    exc: BaseException,
    *,
    where: str,
    limit_s: float,
    fresh_tls: bool,
) -> TransportError:
    """An aiosmtplib, ssl or socket exception during ``step`` as a classified error.

    ``where`` is ``host:port`` for the text, ``limit_s`` the timeout that applied, and
    ``fresh_tls`` says a TLS handshake has just completed (a hang-up then means a refused
    client certificate).
    """
    ssl_err = find_cause(exc, ssl.SSLError)
    if isinstance(ssl_err, ssl.SSLError):
        kind, detail = describe_ssl_error(ssl_err)
        return TransportError(Outcome.TEMPORARY, "tls", detail, kind=kind)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and not 200 <= exc.code <= 599:
        # Not an SMTP reply at all (aiosmtplib's -1 "Malformed SMTP response line: ..."): say
        # so without the peer's bytes.
        return TransportError(
            Outcome.TEMPORARY,
            step,
            f"{where} does not answer like an SMTP server",
            kind=FailureKind.PROTOCOL,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        reply = SmtpReply.parse(exc.code, exc.message)
        kind = FailureKind.DISCONNECTED if exc.code == 421 else FailureKind.REPLY
        return TransportError(reply.outcome, step, str(reply), reply=reply, kind=kind)
    if isinstance(exc, TimeoutError):
        return TransportError(
            Outcome.TEMPORARY,
            step,
            f"no answer from {where} within {limit_s:g} s",
            kind=FailureKind.TIMEOUT,
        )
    if find_cause(exc, ConnectionRefusedError):
        return TransportError(
            Outcome.TEMPORARY, step, f"connection refused by {where}", kind=FailureKind.REFUSED
        )
    disconnected = isinstance(exc, aiosmtplib.SMTPServerDisconnected) or bool(
        find_cause(exc, ConnectionError)
    )
    if disconnected and fresh_tls:
        # TLS 1.3 servers check the client certificate after the handshake and then just
        # close (RFC 8446 4.4.2.4): the client sees an EOF, not a handshake error.
        return TransportError(
            Outcome.TEMPORARY,
            step,
            "the server closed the connection right after the TLS handshake; it may "
            "require a client certificate (tls.client_certificate_pem)",
            kind=FailureKind.TLS_FAILED,
        )
    if disconnected:
        return TransportError(
            Outcome.TEMPORARY,
            step,
            f"the server closed the connection ({exc})",
            kind=FailureKind.DISCONNECTED,
        )
    os_err = find_cause(exc, OSError)
    if isinstance(os_err, OSError):
        text = os_err.strerror or str(os_err)
        return TransportError(Outcome.TEMPORARY, step, f"{where}: {text}", kind=FailureKind.NETWORK)
    return TransportError(Outcome.TEMPORARY, step, str(exc), kind=FailureKind.PROTOCOL)
