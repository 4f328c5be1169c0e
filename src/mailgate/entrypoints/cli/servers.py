"""``mailgate server ...``: the command-line twin of the server test endpoint."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from sqlalchemy import select

from mailgate.adapters.db.tables import Tenant
from mailgate.bootstrap import Container, build
from mailgate.config import Settings
from mailgate.domain.errors import MailgateError
from mailgate.domain.transport import Step
from mailgate.schemas.common import normalize_email
from mailgate.schemas.email_server import ResolvedServer
from mailgate.services.diagnosis.run import Mode, run_test, token_provider

server_app = typer.Typer(help="E-mail server configurations.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _print_step(step: Step) -> None:
    mark = (
        typer.style("ok  ", fg=typer.colors.GREEN)
        if step.ok
        else typer.style("FAIL", fg=typer.colors.RED, bold=True)
    )
    typer.echo(f"  {mark} {step.step:<9} {step.ms:>6} ms  {step.detail}")


def _load(c: Container, tenant: str, name: str) -> ResolvedServer:
    with c.session() as db:
        t = db.scalar(select(Tenant).where(Tenant.name == tenant))
        if t is None:
            raise MailgateError(f"tenant {tenant!r} not found")
        return c.servers.resolve(c.servers.get(db, t.id, name))


@server_app.command("test")
def server_test(
    tenant: str,
    name: str,
    to: Annotated[str, typer.Option("--to", help="Recipient of the test e-mail.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Stop after RCPT TO: nothing is sent.")
    ] = False,
    transcript: Annotated[
        bool, typer.Option("--transcript", help="Also print the (redacted) SMTP dialogue.")
    ] = False,
) -> None:
    """Test an e-mail server configuration step by step (exit status 1 if it fails)."""
    try:
        address = normalize_email(to)
    except ValueError as exc:
        _fail(f"--to: {exc}")
        return
    c = build(Settings())
    c.installation.upgrade_schema()
    try:
        server = _load(c, tenant, name)
    except MailgateError as exc:
        _fail(exc.detail)
        return
    cfg = server.config
    mode: Mode = "dry_run" if dry_run else "send"
    typer.echo(f"Testing {tenant}/{name} ({cfg.describe()}, {mode}) -> {address}")
    result = asyncio.run(
        run_test(
            server,
            prober=c.prober,
            to=address,
            mode=mode,
            label=f"{tenant}/{name}",
            clock=c.clock,
            token_provider=token_provider(c.token_provider_for, server),
            on_step=_print_step,
        )
    )
    for warning in result.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)
    if result.hint:
        typer.echo(f"hint: {result.hint}")
    if transcript:
        typer.echo("transcript:")
        for line in result.transcript:
            typer.echo(f"  {line}")
    verdict = "dry run passed" if dry_run else "test e-mail accepted"
    if result.ok:
        typer.secho(f"{verdict} ({result.ms} ms)", fg=typer.colors.GREEN)
    else:
        typer.secho(f"failed ({result.ms} ms)", fg=typer.colors.RED)
        raise typer.Exit(1)
