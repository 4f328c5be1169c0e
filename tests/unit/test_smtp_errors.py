"""How library, socket and TLS exceptions become a classified ``TransportError``
(adapters/smtp/errors.py, tls.py). No network: the exceptions are built by hand."""

from __future__ import annotations

import ssl

import aiosmtplib
import pytest

from mailgate.adapters.smtp.errors import TransportError, find_cause, translate
from mailgate.adapters.smtp.tls import describe_ssl_error
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import Failure, FailureKind


def _translate(exc: BaseException, step: str = "ehlo", fresh_tls: bool = False) -> TransportError:
    return translate(step, exc, where="mx.example.com:587", limit_s=2.5, fresh_tls=fresh_tls)


def _cert_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, "certificate verify failed")
    err.verify_code = code
    err.verify_message = message
    return err


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (10, FailureKind.CERT_EXPIRED),
        (62, FailureKind.HOSTNAME_MISMATCH),
        (64, FailureKind.HOSTNAME_MISMATCH),
        (18, FailureKind.CERT_UNTRUSTED),
        (20, FailureKind.CERT_UNTRUSTED),
    ],
)
def test_certificate_errors_by_openssl_code(code: int, kind: FailureKind) -> None:
    assert describe_ssl_error(_cert_error(code, "why")) == (
        kind,
        "certificate verification failed: why",
    )


def test_a_tls_error_anywhere_in_the_chain_is_reported_at_tls() -> None:
    handshake = ssl.SSLError(1, "alert")
    handshake.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    wrapper = aiosmtplib.SMTPConnectError("could not connect")
    wrapper.__cause__ = handshake
    err = _translate(wrapper, step="connect")
    assert (err.step, err.kind, err.outcome) == ("tls", FailureKind.TLS_FAILED, "temporary")
    assert err.detail == "TLS handshake failed: TLSV13_ALERT_CERTIFICATE_REQUIRED"


@pytest.mark.parametrize(
    ("code", "kind", "outcome"),
    [
        (421, FailureKind.DISCONNECTED, Outcome.TEMPORARY),
        (451, FailureKind.REPLY, Outcome.TEMPORARY),
        (554, FailureKind.REPLY, Outcome.PERMANENT),
    ],
)
def test_a_reply_keeps_its_code_and_outcome(code: int, kind: FailureKind, outcome: Outcome) -> None:
    err = _translate(aiosmtplib.SMTPResponseException(code, "4.3.2 text"))
    assert (err.kind, err.outcome, err.step) == (kind, outcome, "ehlo")
    assert err.reply is not None and err.reply.code == code
    assert err.detail == f"{code} 4.3.2 text"


def test_timeouts_refusals_and_network_errors() -> None:
    timeout = _translate(TimeoutError(), step="connect")
    assert (timeout.kind, timeout.detail) == (
        FailureKind.TIMEOUT,
        "no answer from mx.example.com:587 within 2.5 s",
    )
    refused = aiosmtplib.SMTPConnectError("no")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert _translate(refused, step="connect").kind is FailureKind.REFUSED
    unreachable = OSError(113, "No route to host")
    err = _translate(unreachable, step="connect")
    assert (err.kind, err.detail) == (FailureKind.NETWORK, "mx.example.com:587: No route to host")
    other = _translate(aiosmtplib.SMTPException("odd"))
    assert (other.kind, other.outcome) == (FailureKind.PROTOCOL, Outcome.TEMPORARY)


def test_a_hang_up_right_after_tls_points_at_the_client_certificate() -> None:
    # RFC 8446 4.4.2.4: a TLS 1.3 server checks the client certificate after the handshake.
    gone = aiosmtplib.SMTPServerDisconnected("Connection lost")
    assert _translate(gone).kind is FailureKind.DISCONNECTED
    err = _translate(gone, fresh_tls=True)
    assert err.kind is FailureKind.TLS_FAILED and "client certificate" in err.detail


def test_find_cause_follows_cause_and_context() -> None:
    root = ConnectionResetError()
    middle = RuntimeError("middle")
    middle.__context__ = root
    top = ValueError("top")
    top.__cause__ = middle
    assert find_cause(top, ConnectionError) is root
    assert find_cause(top, KeyError) is None


def test_the_error_as_a_failure_value() -> None:
    err = TransportError(Outcome.TEMPORARY, "auth", "no token", kind=FailureKind.OAUTH2_TOKEN)
    assert err.failure == Failure("auth", FailureKind.OAUTH2_TOKEN, None, "no token")
    assert TransportError(Outcome.PERMANENT, "data", "x").kind is FailureKind.REPLY
