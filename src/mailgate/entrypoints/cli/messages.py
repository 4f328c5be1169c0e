"""``mailgate send`` and ``mailgate messages``: queue a message, steer many at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mailgate.domain.errors import MailgateError
from mailgate.entrypoints.cli.common import _cli_audit, _container, _fail, _tenant

messages_app = typer.Typer(
    help="Hold, release, cancel or retry messages in bulk.", no_args_is_help=True
)


def send(
    tenant: str,
    to: Annotated[list[str], typer.Option("--to", help="Recipient, repeatable.")],
    subject: Annotated[str | None, typer.Option()] = None,
    server: Annotated[str | None, typer.Option(help="Default: the tenant's default.")] = None,
    sender: Annotated[str | None, typer.Option("--from", help="Default: from the server.")] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc")] = None,
    bcc: Annotated[list[str] | None, typer.Option("--bcc")] = None,
    text: Annotated[str | None, typer.Option(help="Plain text body ('-': stdin).")] = None,
    html_file: Annotated[Path | None, typer.Option(help="HTML body from a file.")] = None,
    attach: Annotated[list[Path] | None, typer.Option(help="Attach a file, repeatable.")] = None,
    hold: Annotated[bool, typer.Option("--hold", help="Store, but send only on release.")] = False,
) -> None:
    """Queue a message for delivery (the worker sends it) and print its id."""
    import base64
    import mimetypes

    from pydantic import ValidationError

    from mailgate.schemas.email_server import pydantic_field_errors
    from mailgate.schemas.message import MessageIn
    from mailgate.services.outbox import Owner, SubmitOptions

    attachments = []
    for path in attach or []:
        if not path.is_file():
            _fail(f"--attach {path}: no such file")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        attachments.append(
            {
                "filename": path.name,
                "content_type": ctype,
                "content_base64": base64.b64encode(path.read_bytes()).decode(),
            }
        )
    body_text = sys.stdin.read() if text == "-" else text
    data = {
        "server": server,
        "from": sender,
        "to": to,
        "cc": cc or [],
        "bcc": bcc or [],
        "subject": subject,
        "text": body_text,
        "html": html_file.read_text() if html_file else None,
        "attachments": attachments,
        "hold": hold,
    }
    try:
        body = MessageIn.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        _fail("; ".join(f"{e.field}: {e.message}" for e in pydantic_field_errors(exc)))
        return
    c = _container()
    c.installation.upgrade_schema()
    try:
        with c.session() as db:
            t = _tenant(db, tenant)
            submitted = c.outbox.submitter.submit(
                db, t.id, Owner("cli", None), body, SubmitOptions.of(body)
            )
            message_id, status = submitted.message.id, submitted.message.status
    except MailgateError as exc:
        _fail(exc.detail)
        return
    typer.echo(f"{message_id}\t{status}")


def _bulk_command(
    action: str,
    tenant: str,
    ids: list[str] | None,
    status: str | None,
    server: str | None,
) -> None:
    from pydantic import ValidationError
    from sqlalchemy import func, select

    from mailgate.adapters.db.tables import Message
    from mailgate.domain.messages import ALLOWED_FROM, Action
    from mailgate.schemas.email_server import pydantic_field_errors
    from mailgate.schemas.message import BulkIn

    try:
        body = BulkIn.model_validate({"ids": ids or None, "status": status, "server": server})
    except ValidationError as exc:
        _fail("; ".join(f"{e.field}: {e.message}" for e in pydantic_field_errors(exc)))
        return
    act = Action(action)
    c = _container()
    c.installation.upgrade_schema()
    try:
        with c.session() as db:
            t = _tenant(db, tenant)
            if body.ids is not None:
                total = len(body.ids)
            else:
                statuses = (
                    [body.status.value] if body.status else [s.value for s in ALLOWED_FROM[act]]
                )
                query = select(func.count()).where(
                    Message.tenant_id == t.id, Message.status.in_(statuses)
                )
                if body.server is not None:
                    query = query.where(Message.server_name == body.server)
                total = db.scalar(query) or 0
            with typer.progressbar(length=total, label=f"{action}", file=sys.stderr) as bar:
                result = c.outbox.steering.bulk(db, t.id, act, body, progress=bar.update)
            selector: dict[str, Any] = (
                {"ids": len(body.ids)}
                if body.ids is not None
                else {"filter": body.model_dump(mode="json", exclude={"ids"}, exclude_none=True)}
            )
            _cli_audit(
                c,
                db,
                f"messages.{act.value}",
                tenant_id=t.id,
                detail={**selector, "changed": len(result.changed), "skipped": len(result.skipped)},
            )
    except MailgateError as exc:
        _fail(exc.detail)
        return
    typer.echo(f"{action}: {len(result.changed)} changed, {len(result.skipped)} skipped")
    for item in result.skipped[:20]:
        typer.echo(f"  {item['id']}: {item['reason']}")


_IDS = typer.Option("--id", help="Message id, repeatable.")
_STATUS = typer.Option(help="Filter: only messages with this status.")
_SERVER = typer.Option(help="Filter: only messages for this e-mail server.")


def _bulk_steering_command(action: str, doc: str) -> None:
    def command(
        tenant: str,
        ids: Annotated[list[str] | None, _IDS] = None,
        status: Annotated[str | None, _STATUS] = None,
        server: Annotated[str | None, _SERVER] = None,
    ) -> None:
        _bulk_command(action, tenant, ids, status, server)

    command.__doc__ = doc
    messages_app.command(action)(command)


for _action, _doc in (
    ("hold", "Hold scheduled, queued and deferred messages until they are released."),
    ("release", "Release held messages."),
    ("cancel", "Cancel messages that are not sent yet."),
    ("retry", "Try deferred and failed messages now."),
):
    _bulk_steering_command(_action, _doc)
