"""A helper for the UI: what is in a PEM certificate (subject, issuer, validity).

The UI shows this next to pasted trust anchors and client certificates, so an administrator
sees at once whether they pasted the right, unexpired certificate.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from fastapi import APIRouter
from pydantic import Field

from mailgate.domain.clock import isoformat
from mailgate.domain.errors import ValidationFailed
from mailgate.entrypoints.api.deps import AppContainer, Caller
from mailgate.schemas.common import StrictModel
from mailgate.schemas.email_server import MAX_PEM
from mailgate.schemas.out.system import CertificateOut, CertificatesOut

router = APIRouter(prefix="/api/v1/certificates", tags=["certificates"])


class PemIn(StrictModel):
    pem: str = Field(min_length=1, max_length=MAX_PEM)


def describe(cert: x509.Certificate, now: datetime) -> CertificateOut:
    return CertificateOut(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=isoformat(cert.not_valid_before_utc),
        not_after=isoformat(cert.not_valid_after_utc),
        expired=cert.not_valid_after_utc <= now,
        self_signed=cert.subject == cert.issuer,
        sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
    )


@router.post("/inspect")
def inspect(body: PemIn, caller: Caller, c: AppContainer) -> CertificatesOut:
    """Describe the certificates in a PEM text. Needs any signed-in caller; stores nothing."""
    try:
        certs = x509.load_pem_x509_certificates(body.pem.encode())
    except ValueError:
        raise ValidationFailed.one(
            "pem", "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ) from None
    now = c.clock()
    return CertificatesOut(certificates=[describe(cert, now) for cert in certs])
