"""What crosses the agent's WebSocket for one job: a configuration with just the secrets that
job needs, and the outcome coming back. Pure functions, used on both ends.
"""

from __future__ import annotations

from typing import Any

from mailgate.adapters.smtp.errors import TransportError
from mailgate.adapters.smtp.replies import RecipientReply, SendResult, SmtpReply
from mailgate.domain.messages import Outcome
from mailgate.domain.transport import FailureKind
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.schemas.remote import ServerSpec


def server_spec(server: ResolvedServer, access_token: str | None = None) -> ServerSpec:
    """The configuration for the agent. Never the OAuth2 client secret or refresh token:
    the agent gets a current access token instead and cannot mint new ones."""
    config = server.config.model_dump(
        mode="json",
        exclude={
            "is_default": True,
            "authentication": {"password", "client_secret"},
            "tls": {"client_key_pem"},
        },
    )
    # The agent delivers itself; it must not try to hand the job on.
    config["remote_output"] = {"enabled": False, "remote_client": None}
    return ServerSpec(
        config=config,
        password=server.secrets.password,
        client_key_pem=server.secrets.client_key_pem,
        access_token=access_token,
    )


def resolved_from_spec(spec: ServerSpec) -> ResolvedServer:
    """The agent's side: a ``ResolvedServer`` the transport takes as it is."""
    cfg = EmailServerIn.model_validate(spec.config)
    secrets = ServerSecrets(password=spec.password, client_key_pem=spec.client_key_pem)
    return ResolvedServer(id=0, tenant_id=None, name=cfg.name, config=cfg, secrets=secrets)


class StaticToken:
    """The token provider on the agent: the access token mailgate sent with the job."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def access_token(self, *, force_refresh: bool = False) -> str:
        # A refresh is mailgate's business (it holds the refresh token); the job fails with
        # the server's answer and mailgate retries it with a fresh token.
        return self._token


def secrets_in(spec: ServerSpec) -> list[str]:
    """The secret values of a spec, for scrubbing logs and error texts."""
    return [s for s in (spec.password, spec.client_key_pem, spec.access_token) if s]


def scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---- outcomes: the transport's own result types, so mailgate records them as if it had
# ---- talked SMTP itself ------------------------------------------------------------------


def _reply_dict(reply: SmtpReply | None) -> dict[str, Any] | None:
    return reply.as_dict() if reply is not None else None


def _reply_of(data: Any) -> SmtpReply | None:
    if not isinstance(data, dict):
        return None
    code = data.get("code")
    return SmtpReply(
        code if isinstance(code, int) else None,
        str(data["enhanced"]) if data.get("enhanced") else None,
        str(data.get("text") or "")[:2000],
    )


def encode_send_result(result: SendResult) -> dict[str, Any]:
    return {
        "kind": "send_result",
        "outcome": result.outcome.value,
        "reply": _reply_dict(result.reply),
        "recipients": {
            address: {"outcome": r.outcome.value, "reply": _reply_dict(r.reply)}
            for address, r in result.recipients.items()
        },
        "elapsed_ms": result.elapsed_ms,
        "step": result.step,
        "detail": result.detail,
        "error_kind": result.kind,
    }


def encode_transport_error(err: TransportError) -> dict[str, Any]:
    return {
        "kind": "transport_error",
        "outcome": err.outcome.value,
        "step": err.step,
        "detail": err.detail,
        "reply": _reply_dict(err.reply),
        "error_kind": err.kind,
        "possibly_delivered": err.possibly_delivered,
    }


def _outcome(value: Any) -> Outcome:
    try:
        return Outcome(value)
    except ValueError:
        return Outcome.TEMPORARY  # an agent speaking nonsense: retry, never lose


def _kind(value: Any) -> FailureKind | None:
    try:
        return FailureKind(value) if value else None
    except ValueError:
        return FailureKind.REPLY  # an agent of another version: let the reply speak


def decode_outcome(data: dict[str, Any]) -> SendResult | TransportError:
    """An agent's report as the transport's own type. Anything malformed is a temporary
    ``TransportError``: the message is tried again, never dropped."""
    kind = data.get("kind")
    step = str(data.get("step") or "data")[:20]
    detail = str(data.get("detail") or "")[:2000]
    if kind == "send_result" and isinstance(data.get("recipients"), dict):
        recipients = {
            str(address): RecipientReply(
                _outcome(as_dict(r).get("outcome")), _reply_of(as_dict(r).get("reply"))
            )
            for address, r in data["recipients"].items()
        }
        elapsed = data.get("elapsed_ms")
        return SendResult(
            _outcome(data.get("outcome")),
            _reply_of(data.get("reply")),
            recipients,
            elapsed if isinstance(elapsed, int) else 0,
            step,
            detail,
            _kind(data.get("error_kind")),
        )
    if kind == "transport_error":
        err = TransportError(
            _outcome(data.get("outcome")),
            step,
            detail,
            reply=_reply_of(data.get("reply")),
            kind=_kind(data.get("error_kind")) or FailureKind.REPLY,
        )
        err.possibly_delivered = data.get("possibly_delivered") is True
        return err
    problem = str(data.get("error") or "the remote client sent an unreadable report")[:500]
    return TransportError(Outcome.TEMPORARY, step, problem, kind=FailureKind.REMOTE)
