"""Advice for the admin when a server test fails: by the failure's kind first, then by the
server's reply (code, RFC 3463 enhanced code and text, with known provider quirks such as
Microsoft 365's 5.7.139 and SendAsDenied).

``KIND_HINTS`` names every ``FailureKind`` (a unit test holds it to that); ``None`` there
means the reply says more than the kind.
"""

from __future__ import annotations

from mailgate.domain.transport import FailureKind, Reply


def hint_for(step: str, kind: FailureKind | None, reply: Reply | None) -> str | None:
    """Advice for a failure at ``step``. ``None`` when there is nothing better to say."""
    simple = KIND_HINTS.get(kind) if kind is not None else None
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
        return KIND_HINTS[FailureKind.TOO_LARGE]
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


KIND_HINTS: dict[FailureKind, str | None] = {
    FailureKind.REPLY: None,
    FailureKind.PROTOCOL: None,
    FailureKind.AUTH_FAILED: None,
    FailureKind.REMOTE: None,
    FailureKind.DNS: (
        "The host name does not resolve. Check the spelling of host and this machine's DNS."
    ),
    FailureKind.REFUSED: (
        "Nothing accepts connections on this host and port. Check the port (587 for "
        "STARTTLS, 465 for smtps, 25 for relays) and any firewall in between."
    ),
    FailureKind.TIMEOUT: (
        "The server did not answer in time. A firewall may drop the traffic, the port may be "
        "wrong (465 expects protocol 'smtps'), or the server is overloaded; timeouts are "
        "configurable under timeouts."
    ),
    FailureKind.NETWORK: "The network connection failed; check the host, port and routing.",
    FailureKind.CERT_UNTRUSTED: (
        "The server's certificate is not trusted (self-signed or issued by an unknown CA). "
        "Add the issuing CA certificate (or the server certificate) in PEM form under "
        "tls.ca_certificates_pem instead of turning verification off."
    ),
    FailureKind.HOSTNAME_MISMATCH: (
        "The certificate does not name this host. Use the host name the certificate was "
        "issued for (e.g. smtp.office365.com, not an IP address or alias)."
    ),
    FailureKind.CERT_EXPIRED: (
        "The server's certificate has expired; the server's operator must renew it."
    ),
    FailureKind.TLS_FAILED: (
        "The TLS handshake failed. If the server requires a client certificate, configure "
        "tls.client_certificate_pem and tls.client_key_pem; with port 465 use protocol 'smtps', "
        "with 587/25 use 'smtp' and STARTTLS."
    ),
    FailureKind.TLS_CONFIG: (
        "The TLS settings could not be loaded: check tls.ca_certificates_pem and the client "
        "certificate and key (PEM, the key unencrypted and matching the certificate)."
    ),
    FailureKind.STARTTLS_MISSING: (
        "The server does not offer STARTTLS. Use protocol 'smtps' if it expects implicit TLS "
        "(usually port 465); only if the network path is trusted set starttls to 'disabled'."
    ),
    FailureKind.AUTH_MISSING: (
        "The server offers no authentication (AUTH) here. Many servers offer AUTH only after "
        "STARTTLS, or on port 587 rather than 25; or choose authentication 'none' for a relay "
        "that trusts mailgate's address."
    ),
    FailureKind.AUTH_MECHANISM_MISSING: (
        "The server offers no authentication mechanism mailgate can use for this method "
        "(PLAIN or LOGIN for passwords, XOAUTH2 for OAuth2)."
    ),
    FailureKind.PLAINTEXT_AUTH_REFUSED: (
        "mailgate refuses to send credentials over an unencrypted connection. Use STARTTLS "
        "(starttls 'required') or 'smtps'."
    ),
    FailureKind.OAUTH2_TOKEN: (
        "No OAuth2 access token could be obtained. Authorize the configuration again (or "
        "check the client secret for client credentials)."
    ),
    FailureKind.NO_TOKEN_PROVIDER: (
        "OAuth2 is not available in this process; authorize the server first."
    ),
    FailureKind.TOO_LARGE: (
        "The message is larger than the server accepts (SIZE). Send smaller attachments or "
        "raise the server's limit."
    ),
    FailureKind.SMTPUTF8: (
        "An address contains non-ASCII characters but the server does not support SMTPUTF8."
    ),
    FailureKind.DISCONNECTED: (
        "The server closed the connection unexpectedly. It may limit connections or rates; "
        "real mail is retried automatically."
    ),
}
