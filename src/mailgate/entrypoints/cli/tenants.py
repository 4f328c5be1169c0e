"""``mailgate tenant``: create, list, export and import tenants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mailgate.adapters.db.tables import Tenant
from mailgate.domain.errors import MailgateError
from mailgate.entrypoints.cli.common import (
    _cli_actor,
    _cli_audit,
    _cli_tenant,
    _container,
    _fail,
    _fail_with,
    _read_passphrase,
)

tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)


@tenant_app.command("create")
def tenant_create(
    name: str, display_name: Annotated[str | None, typer.Option(help="Shown in the UI.")] = None
) -> None:
    """Create a tenant."""
    from mailgate.schemas.common import check_tenant_name
    from mailgate.services.tenants import create_tenant

    try:
        check_tenant_name(name)
    except ValueError as exc:
        _fail(f"tenant name: {exc}")
    c = _container()
    c.installation.upgrade_schema()
    try:
        with c.session() as db:
            row = create_tenant(db, c.clock, name, display_name)
            db.flush()
            detail = {"name": row.name, "display_name": row.display_name}
            _cli_audit(c, db, "tenant.create", tenant_id=row.id, detail=detail)
    except MailgateError as exc:
        _fail(exc.detail)
    typer.echo(f"created tenant {name}")


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""
    c = _container()
    c.installation.upgrade_schema()
    with c.session() as db:
        for t in db.query(Tenant).order_by(Tenant.name):
            typer.echo(f"{t.name}\t{t.display_name}")


@tenant_app.command("export")
def tenant_export(
    tenant: str,
    resources: Annotated[
        str | None, typer.Option(help="Comma-separated: email-servers, remote-clients.")
    ] = None,
    passphrase_stdin: Annotated[
        bool,
        typer.Option(
            "--passphrase-stdin",
            help="Include secrets, encrypted with a passphrase read from stdin (prompted on a "
            "terminal).",
        ),
    ] = False,
) -> None:
    """Write a tenant's configuration as JSON to stdout: mailgate tenant export T > t.json"""
    from mailgate.services.transfer.document import check_passphrase, parse_resources

    passphrase = _read_passphrase(confirm=True) if passphrase_stdin else None
    c = _container()
    c.installation.upgrade_schema()
    try:
        wanted = parse_resources(resources)
        check_passphrase(passphrase)
        typer.echo(f"exporting tenant {tenant} ({', '.join(wanted)})...", err=True)
        with c.session() as db:
            t = _cli_tenant(c, db, tenant)
            doc = c.transfer.export(
                db, t, resources=wanted, passphrase=passphrase, actor=_cli_actor()
            )
    except MailgateError as exc:
        _fail_with(exc)
    typer.echo(json.dumps(doc, indent=2))
    servers, clients = len(doc.get("email_servers", [])), len(doc.get("remote_clients", []))
    how = "with encrypted secrets" if passphrase else "without secrets"
    typer.echo(f"exported {servers} e-mail server(s), {clients} remote client(s) {how}", err=True)


@tenant_app.command("import")
def tenant_import(
    tenant: str,
    file: Annotated[Path, typer.Argument(help="A file made by `mailgate tenant export`.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and report; change nothing.")
    ] = False,
    passphrase_stdin: Annotated[
        bool,
        typer.Option(
            "--passphrase-stdin",
            help="Restore secrets with the export's passphrase, read from stdin.",
        ),
    ] = False,
) -> None:
    """Create or overwrite a tenant's configuration from an export file (all or nothing)."""
    try:
        document = json.loads(file.read_bytes())
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    except ValueError:
        _fail(f"{file} is not valid JSON (truncated or not an export file)")
    passphrase = _read_passphrase(confirm=False) if passphrase_stdin else None
    c = _container()
    c.installation.upgrade_schema()
    typer.echo(
        f"importing {file} into tenant {tenant}{' (dry run)' if dry_run else ''}...", err=True
    )
    try:
        with c.session() as db:
            t = _cli_tenant(c, db, tenant)
            report = c.transfer.import_(
                db, t, document, passphrase=passphrase, dry_run=dry_run, actor=_cli_actor()
            )
    except MailgateError as exc:
        _fail_with(exc)
    for key in ("created", "overwritten", "unchanged"):
        for item in report[key]:
            typer.echo(f"{key}\t{item['resource']}\t{item['name']}")
    for warning in report["warnings"]:
        where = f"{warning['resource']} {warning['name']}".strip()
        typer.secho(f"warning\t{where}: {warning['message']}", fg=typer.colors.YELLOW)
    if dry_run:
        typer.echo("dry run: nothing was changed", err=True)
