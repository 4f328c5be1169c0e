"""Loading a configuration's client certificate and key into an ``ssl.SSLContext``: one
function for delivery (``adapters/smtp/tls.py``) and for the check when a configuration is
saved, so a key that is saved is a key that delivery can load (OpenSSL's PEM reader is
stricter than the ``cryptography`` parser: a key whose line breaks were lost still parses
there, and fails here).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path


def load_client_certificate(ctx: ssl.SSLContext, certificate_pem: str, key_pem: str) -> None:
    """Load the certificate chain and its unencrypted key; raises ``ssl.SSLError`` when
    OpenSSL cannot use them together."""
    # ssl loads a certificate chain only from files: a private 0700 directory, removed right
    # after loading.
    with tempfile.TemporaryDirectory(prefix="mailgate-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_text(certificate_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key_pem)
        # No password callback: an encrypted key fails instead of prompting on the console.
        ctx.load_cert_chain(cert_path, key_path, password=lambda: b"")


def client_certificate_problem(certificate_pem: str, key_pem: str) -> str | None:
    """Why delivery could not present this certificate and key, or ``None``."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        load_client_certificate(ctx, certificate_pem, key_pem)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.__class__.__name__
        return (
            f"OpenSSL cannot load this key with the certificate ({reason}); paste the whole "
            "PEM file with its line breaks, or upload it"
        )
    except (OSError, ValueError) as exc:
        return f"the key cannot be loaded: {exc.__class__.__name__}"
    return None
