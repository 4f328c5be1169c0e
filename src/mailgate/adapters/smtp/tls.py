"""TLS for the SMTP transport: the context a configuration asks for, and certificate errors
described in words an admin can act on."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from mailgate.domain.transport import FailureKind
from mailgate.schemas.tls import load_client_certificate

if TYPE_CHECKING:
    from mailgate.schemas.email_server import TlsSettings


def build_tls_context(tls: TlsSettings, client_key_pem: str | None) -> ssl.SSLContext:
    """System trust store plus the config's CA certificates; optional client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca_certificates_pem:
        ctx.load_verify_locations(cadata=tls.ca_certificates_pem)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.client_certificate_pem and client_key_pem:
        load_client_certificate(ctx, tls.client_certificate_pem, client_key_pem)
    return ctx


def cert_error_kind(err: ssl.SSLCertVerificationError) -> FailureKind:
    # OpenSSL X509_V_ERR_*: 10 expired, 62/64 host name/IP mismatch; the rest: untrusted.
    code = getattr(err, "verify_code", None)
    if code == 10:
        return FailureKind.CERT_EXPIRED
    if code in (62, 64):
        return FailureKind.HOSTNAME_MISMATCH
    return FailureKind.CERT_UNTRUSTED


def describe_ssl_error(err: ssl.SSLError) -> tuple[FailureKind, str]:
    """The kind of a TLS failure and a one-line description of it."""
    if isinstance(err, ssl.SSLCertVerificationError):
        message = getattr(err, "verify_message", None) or err.reason or str(err)
        return cert_error_kind(err), f"certificate verification failed: {message}"
    reason = err.reason or str(err)
    return FailureKind.TLS_FAILED, f"TLS handshake failed: {reason}"
