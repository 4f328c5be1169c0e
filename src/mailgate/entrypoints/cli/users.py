"""``mailgate user`` and ``mailgate apikey``: people and the keys of programs."""

from __future__ import annotations

from typing import Annotated

import typer

from mailgate.adapters.db.tables import User
from mailgate.domain.access import Role
from mailgate.domain.errors import MailgateError
from mailgate.entrypoints.cli.common import (
    _cli_audit,
    _container,
    _fail,
    _read_password,
    _tenant,
)

user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
apikey_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


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
    c.installation.upgrade_schema()
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
            detail = {"username": username, "roles": roles, "system_admin": system_admin}
            _cli_audit(c, db, "user.create", tenant_id=None, detail=detail)
    except MailgateError as exc:
        _fail(exc.detail)
    typer.echo(f"created user {username}")


@user_app.command("list")
def user_list() -> None:
    """List users with their roles."""
    c = _container()
    c.installation.upgrade_schema()
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

    if role not in {r.value for r in Role}:
        _fail(f"--role must be one of {', '.join(r.value for r in Role)}")
    c = _container()
    c.installation.upgrade_schema()
    with c.session() as db:
        t = _tenant(db, tenant)
        key, token = c.identity.create_api_key(db, t, name, Role(role), "cli")
        detail = {"id": key.id, "name": key.name, "role": key.role}
        _cli_audit(c, db, "api_key.create", tenant_id=t.id, detail=detail)
    typer.echo(token)
