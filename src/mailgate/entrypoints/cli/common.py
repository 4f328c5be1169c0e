"""What every command group shares: the container, error exits, prompts, tenant lookup."""

from __future__ import annotations

import sys
from typing import Any

import typer
from sqlalchemy.orm import Session

from mailgate.adapters.db.tables import Tenant
from mailgate.bootstrap import Container, build
from mailgate.config import Settings
from mailgate.domain.errors import MailgateError


def _logging(settings: Settings) -> None:
    """The log format of the service (serve and its worker processes write one stream)."""
    import logging

    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if settings.log_level.upper() != "DEBUG":
        # Alembic's plugin and context lines at every start are noise, not news.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _container() -> Container:
    return build(Settings())


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _tenant(db: Session, name: str) -> Tenant:
    """The tenant ``name``, or exit with an error naming it."""
    from sqlalchemy import select

    t: Tenant | None = db.scalar(select(Tenant).where(Tenant.name == name))
    if t is None:
        _fail(f"tenant {name!r} not found")
    assert t is not None
    return t


def _read_password(from_stdin: bool, prompt: str = "Password") -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            _fail("no password on standard input")
        return value
    value = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return str(value)


def _read_passphrase(confirm: bool) -> str:
    """A passphrase from a hidden prompt on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        return str(typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm))
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        _fail("no passphrase on standard input")
    return value


def _fail_with(exc: MailgateError) -> None:
    from mailgate.domain.errors import ValidationFailed

    if isinstance(exc, ValidationFailed):
        for err in exc.errors:
            typer.secho(f"  {err.field}: {err.message}", err=True)
        _fail("the document does not validate; nothing changed")
    _fail(exc.detail)


def _cli_tenant(c: Container, db: Any, name: str) -> Tenant:
    from sqlalchemy import select

    t: Tenant | None = db.scalar(select(Tenant).where(Tenant.name == name))
    if t is None:
        _fail(f"tenant {name!r} not found")
    assert isinstance(t, Tenant)
    return t


def _cli_audit(
    c: Container,
    db: Session,
    action: str,
    *,
    tenant_id: int | None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record a change made on the command line in the audit trail (README "Audit log"):
    the actor is ``cli:<OS user>``, there is no source address."""
    from mailgate.services.audit import record

    record(db, action, tenant_id=tenant_id, actor=_cli_actor(), now=c.clock(), detail=detail)


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
