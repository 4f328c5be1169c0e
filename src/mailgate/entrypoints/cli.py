"""The ``mailgate`` command: serve | migrate | tenant | user | apikey | keygen.

Passwords are read from a prompt or from standard input, never from the command line (argv
is visible to every user of the machine through ``ps``).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from mailgate.adapters.db.engine import migrate as run_migrations
from mailgate.adapters.db.tables import Tenant, User
from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import Container, build, first_start
from mailgate.config import Settings
from mailgate.domain.access import Role
from mailgate.domain.errors import MailgateError

app = typer.Typer(help="mailgate: a multi-tenant outbound e-mail gateway.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
apikey_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")


def _container() -> Container:
    return build(Settings())


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _read_password(from_stdin: bool, prompt: str = "Password") -> str:
    if from_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            _fail("no password on standard input")
        return value
    value = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return str(value)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MAILGATE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (MAILGATE_PORT).")] = None,
) -> None:
    """Run the API, the web UI and the delivery worker in one process."""
    import uvicorn

    from mailgate.entrypoints.api.app import create_app

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    c = build(settings)
    first_start(c)
    uvicorn.run(
        create_app(c),
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (also done at every start)."""
    c = _container()
    run_migrations(c.engine)
    typer.echo("database is at the newest schema")


@app.command()
def keygen() -> None:
    """Print a new key for MAILGATE_SECRET_KEY."""
    typer.echo(generate_key())


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
    first_start(c, echo=lambda _m: None)
    try:
        with c.session() as db:
            create_tenant(db, c.clock, name, display_name)
    except MailgateError as exc:
        _fail(exc.detail)
    typer.echo(f"created tenant {name}")


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants."""
    c = _container()
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        for t in db.query(Tenant).order_by(Tenant.name):
            typer.echo(f"{t.name}\t{t.display_name}")


@user_app.command("create")
def user_create(
    username: str,
    email: Annotated[str | None, typer.Option()] = None,
    role: Annotated[
        list[str] | None, typer.Option(help="TENANT=ROLE, repeatable (admin, user, read_only).")
    ] = None,
    system_admin: Annotated[bool, typer.Option("--system-admin")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Create a user; the password is prompted for (or read from stdin)."""
    roles: dict[str, str] = {}
    for item in role or []:
        tenant, sep, value = item.partition("=")
        if not sep or value not in {r.value for r in Role}:
            _fail(
                f"--role {item!r}: use TENANT=ROLE with ROLE one of "
                "admin, user, read_only, web_service"
            )
        roles[tenant] = value
    password = _read_password(password_stdin)
    c = _container()
    first_start(c, echo=lambda _m: None)
    try:
        with c.session() as db:
            c.identity.create_user(
                db,
                username=username,
                password=password,
                email=email,
                roles=roles,
                system_admin=system_admin,
            )
    except MailgateError as exc:
        _fail(exc.detail)
    typer.echo(f"created user {username}")


@user_app.command("list")
def user_list() -> None:
    """List users with their roles."""
    c = _container()
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        for u in db.query(User).order_by(User.username):
            view = c.identity.user_view(db, u)
            roles = ", ".join(f"{t}={r}" for t, r in view["roles"].items())
            flag = " (system admin)" if u.system_admin else ""
            typer.echo(f"{u.username}{flag}\t{roles}")


@apikey_app.command("create")
def apikey_create(
    tenant: str,
    name: str,
    role: Annotated[
        str, typer.Option(help="web_service, user, read_only or admin.")
    ] = "web_service",
) -> None:
    """Create an API key; the token is printed once."""
    from sqlalchemy import select

    if role not in {r.value for r in Role}:
        _fail(f"--role must be one of {', '.join(r.value for r in Role)}")
    c = _container()
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        t = db.scalar(select(Tenant).where(Tenant.name == tenant))
        if t is None:
            _fail(f"tenant {tenant!r} not found")
        assert t is not None
        _key, token = c.identity.create_api_key(db, t, name, Role(role), "cli")
    typer.echo(token)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
