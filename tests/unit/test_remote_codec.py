"""The job and outcome codec of the remote agent protocol (pure functions)."""

from __future__ import annotations

from mailgate.adapters.remote.codec import (
    decode_outcome,
    encode_send_result,
    encode_transport_error,
    resolved_from_spec,
    server_spec,
)
from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import RecipientReply, SendResult, SmtpReply
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import FailureKind
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.schemas.remote import ServerSpec


def oauth_server() -> ResolvedServer:
    cfg = EmailServerIn.model_validate(
        {
            "name": "O365",
            "host": "smtp.office365.com",
            "tls": {"client_certificate_pem": None},
            "authentication": {
                "method": "oauth2",
                "provider": "microsoft",
                "grant": "client_credentials",
                "username": "sender@contoso.com",
                "directory_tenant_id": "contoso",
                "client_id": "app-id",
            },
            "remote_output": {"enabled": True, "remote_client": "plant-1"},
        }
    )
    return ResolvedServer(7, 3, "O365", cfg, ServerSecrets(client_secret="the-client-secret-value"))


def test_spec_carries_the_access_token_but_never_the_client_secret() -> None:
    spec = server_spec(oauth_server(), access_token="eyJ-access")
    wire = spec.model_dump_json()
    assert "the-client-secret-value" not in wire
    assert "client_secret" not in spec.config["authentication"]
    assert spec.access_token == "eyJ-access"
    # The agent must not hand the job on again.
    assert spec.config["remote_output"] == {"enabled": False, "remote_client": None}
    back = resolved_from_spec(ServerSpec.model_validate_json(wire))
    assert back.config.host == "smtp.office365.com" and back.config.port is None
    assert back.config.authentication.username == "sender@contoso.com"
    assert back.secrets.client_secret is None


def test_send_result_round_trip_keeps_every_recipient() -> None:
    ok = SmtpReply(250, "2.0.0", "OK queued")
    bad = SmtpReply(550, "5.1.1", "no such user")
    result = SendResult(
        Outcome.PERMANENT,
        ok,
        {
            "a@example.org": RecipientReply(Outcome.DELIVERED, ok),
            "b@example.org": RecipientReply(Outcome.PERMANENT, bad),
        },
        123,
        "data",
        "250 2.0.0 OK queued",
    )
    back = decode_outcome(encode_send_result(result))
    assert back == result


def test_transport_error_round_trip_and_garbage_is_temporary() -> None:
    err = TransportError(
        Outcome.TEMPORARY,
        "tls",
        "certificate verification failed",
        reply=None,
        kind=FailureKind.CERT_UNTRUSTED,
    )
    back = decode_outcome(encode_transport_error(err))
    assert isinstance(back, TransportError)
    assert (back.outcome, back.step, back.detail, back.kind) == (
        Outcome.TEMPORARY,
        "tls",
        "certificate verification failed",
        "cert_untrusted",
    )
    for junk in (
        {},
        {"kind": "send_result"},
        {"error": "boom"},
        {"kind": "x", "outcome": "delivered"},
    ):
        decoded = decode_outcome(junk)
        assert isinstance(decoded, TransportError)
        assert decoded.outcome is Outcome.TEMPORARY
    weird = decode_outcome(
        {
            **encode_send_result(SendResult(Outcome.DELIVERED, None, {}, 1, "data")),
            "outcome": "bogus",
        }
    )
    assert isinstance(weird, SendResult) and weird.outcome is Outcome.TEMPORARY


def test_an_unknown_failure_kind_from_another_agent_version_leaves_it_to_the_reply() -> None:
    err = TransportError(Outcome.TEMPORARY, "auth", "535 nope", kind=FailureKind.AUTH_FAILED)
    report = {**encode_transport_error(err), "error_kind": "quantum_flux"}
    back = decode_outcome(report)
    assert isinstance(back, TransportError) and back.kind is FailureKind.REPLY
    assert decode_outcome(encode_transport_error(err)).kind is FailureKind.AUTH_FAILED
    sent = encode_send_result(SendResult(Outcome.PERMANENT, None, {}, 1, "mail_from"))
    too_large = decode_outcome({**sent, "error_kind": "too_large"})
    assert isinstance(too_large, SendResult) and too_large.kind is FailureKind.TOO_LARGE
