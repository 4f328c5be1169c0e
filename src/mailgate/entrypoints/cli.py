"""The ``mailgate`` command: serve | worker | agent | send | messages | migrate | tenant |
user | apikey | keygen.

Passwords are read from a prompt or from standard input, never from the command line (argv
is visible to every user of the machine through ``ps``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.orm import Session

from mailgate.adapters.db.engine import migrate as run_migrations
from mailgate.adapters.db.tables import Tenant, User
from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import Container, build, first_start
from mailgate.config import Settings
from mailgate.domain.access import Role
from mailgate.domain.errors import MailgateError
from mailgate.entrypoints.cli_server import server_app

app = typer.Typer(help="mailgate: a multi-tenant outbound e-mail gateway.", no_args_is_help=True)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
apikey_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
messages_app = typer.Typer(
    help="Hold, release, cancel or retry messages in bulk.", no_args_is_help=True
)
app.add_typer(tenant_app, name="tenant")
app.add_typer(messages_app, name="messages")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(server_app, name="server")
secrets_app = typer.Typer(help="Manage the encryption of stored secrets.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


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


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (MAILGATE_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Listen port (MAILGATE_PORT); 0 picks a free one.")
    ] = None,
) -> None:
    """Run the API, the web UI and the delivery worker in one process."""
    import uvicorn

    from mailgate.entrypoints.api.app import create_app

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if settings.log_level.upper() != "DEBUG":
        # Alembic's plugin and context lines at every start are noise, not news.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    c = build(settings)
    first_start(c)
    from mailgate.entrypoints.keeper import TokenKeeper

    keeper = TokenKeeper(c.oauth2)
    keeper.start()
    try:
        uvicorn.run(
            create_app(c),
            host=host or settings.host,
            port=port if port is not None else settings.port,  # 0: an ephemeral port
            log_level=settings.log_level.lower(),
            # Below INFO nothing is logged per request: then uvicorn need not even build the
            # access log line (client address, quoted path) for every request.
            access_log=logging.getLevelNamesMapping().get(settings.log_level.upper(), 0)
            <= logging.INFO,
            proxy_headers=False,
        )
    finally:
        keeper.stop()


@app.command()
def agent(
    url: Annotated[
        str,
        typer.Option(
            envvar="MAILGATE_AGENT_URL",
            help="mailgate's base URL, e.g. https://mail.example.com (wss:// for https).",
        ),
    ],
    token: Annotated[
        str,
        typer.Option(
            envvar="MAILGATE_AGENT_TOKEN",
            help="The remote client's token (mgr_...). Prefer the environment variable: "
            "the command line is visible to other users through ps.",
            show_default=False,
        ),
    ],
    ca_file: Annotated[
        Path | None,
        typer.Option(
            envvar="MAILGATE_AGENT_CA_FILE",
            exists=True,
            dir_okay=False,
            help="Extra CA certificate(s) (PEM) to trust for mailgate's certificate.",
        ),
    ] = None,
    backoff_max: Annotated[
        float, typer.Option(envvar="MAILGATE_AGENT_BACKOFF_MAX_S", min=1, help="Seconds.")
    ] = 60.0,
    allow_http: Annotated[
        bool,
        typer.Option(
            "--allow-http",
            envvar="MAILGATE_AGENT_ALLOW_HTTP",
            help="Allow plain http:// to another machine (jobs carry SMTP credentials).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(envvar="MAILGATE_LOG_LEVEL")] = "INFO",
) -> None:
    """Run a remote client agent: connect out to mailgate and deliver its tenant's mail."""
    import asyncio
    import signal

    from mailgate.entrypoints.agent import (
        Agent,
        AgentOptions,
        TransportJobRunner,
        check_transport_security,
        websocket_url,
    )

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        check_transport_security(websocket_url(url), allow_http)
    except ValueError as exc:
        _fail(f"--url: {exc}")
    options = AgentOptions(
        url=url, token=token, ca_file=ca_file, backoff_max_s=backoff_max, allow_http=allow_http
    )

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Agent(options, TransportJobRunner()).run(stop)

    raise typer.Exit(asyncio.run(main()))


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (also done at every start)."""
    from mailgate.bootstrap import startup_lock

    c = _container()
    with startup_lock(c.engine):
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
    from mailgate.services.transfer import Transfer, check_passphrase, parse_resources

    passphrase = _read_passphrase(confirm=True) if passphrase_stdin else None
    c = _container()
    first_start(c, echo=lambda _m: None)
    try:
        wanted = parse_resources(resources)
        check_passphrase(passphrase)
        typer.echo(f"exporting tenant {tenant} ({', '.join(wanted)})...", err=True)
        with c.session() as db:
            t = _cli_tenant(c, db, tenant)
            doc = Transfer(c.servers, c.clock).export(
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
    from mailgate.services.transfer import Transfer

    try:
        document = json.loads(file.read_bytes())
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    except ValueError:
        _fail(f"{file} is not valid JSON (truncated or not an export file)")
    passphrase = _read_passphrase(confirm=False) if passphrase_stdin else None
    c = _container()
    first_start(c, echo=lambda _m: None)
    typer.echo(
        f"importing {file} into tenant {tenant}{' (dry run)' if dry_run else ''}...", err=True
    )
    try:
        with c.session() as db:
            t = _cli_tenant(c, db, tenant)
            report = Transfer(c.servers, c.clock).import_(
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


def _cli_actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


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

    if role not in {r.value for r in Role}:
        _fail(f"--role must be one of {', '.join(r.value for r in Role)}")
    c = _container()
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        t = _tenant(db, tenant)
        _key, token = c.identity.create_api_key(db, t, name, Role(role), "cli")
    typer.echo(token)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the first key of MAILGATE_SECRET_KEY.

    Put a new key (`mailgate keygen`) in front of the old one (MAILGATE_SECRET_KEY=new,old,
    or both comma-separated in the key file), restart mailgate, run this, then remove the old
    key. Safe to run while mailgate serves, and again after an interruption.
    """
    from mailgate.services.secret_rotation import count_secrets, rotate_all

    c = _container()
    run_migrations(c.engine)
    with c.session() as db:
        total = count_secrets(db)
    typer.echo(f"{total} stored secrets; encrypting with key {c.box.current_key_id}")
    with typer.progressbar(length=total, label="re-encrypting", file=sys.stderr) as bar:
        report = rotate_all(c.sessions, c.box, progress=bar.update)
    typer.echo(
        f"{report.rotated} re-encrypted, {report.current} already under the current key"
        + (f", {report.changed_meanwhile} changed meanwhile" if report.changed_meanwhile else "")
    )
    if report.failed:
        for line in report.failed:
            typer.secho(f"  cannot decrypt {line}", fg=typer.colors.RED, err=True)
        _fail(
            f"{len(report.failed)} secrets do not decrypt with the configured keys; "
            "keep the old keys until they are re-entered"
        )
    typer.echo("every secret is under the current key; older keys can be removed")


@app.command()
def worker(
    workers: Annotated[
        int, typer.Option("--workers", "-n", min=1, max=64, help="Workers in this process.")
    ] = 1,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on this port (127.0.0.1).")
    ] = None,
    stats_every: Annotated[
        float, typer.Option(help="Print a progress line every this many seconds (0: never).")
    ] = 10.0,
) -> None:
    """Deliver queued mail until SIGTERM or Ctrl-C (run many of these on PostgreSQL)."""
    import asyncio
    import signal
    import time

    import uvloop

    from mailgate.entrypoints.worker import Worker, default_worker_id

    settings = Settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    c = build(settings)
    run_migrations(c.engine)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=c.metrics.registry)

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pool = [Worker(c, worker_id=default_worker_id(i)) for i in range(workers)]
        tasks = [asyncio.create_task(w.run(stop)) for w in pool]
        typer.echo(f"mailgate worker: {workers} worker(s) delivering; Ctrl-C or SIGTERM stops")
        started, last = time.monotonic(), 0
        while not stop.is_set() and stats_every > 0:
            try:
                await asyncio.wait_for(stop.wait(), stats_every)
            except TimeoutError:
                total = sum(w.delivered for w in pool)
                rate = (total - last) / stats_every
                typer.echo(
                    f"delivered {total} in {time.monotonic() - started:.0f} s ({rate:.1f}/s now)"
                )
                last = total
        await asyncio.gather(*tasks)
        typer.echo(f"stopped after delivering {sum(w.delivered for w in pool)} messages")

    from mailgate.entrypoints.keeper import TokenKeeper

    # Every process that sends keeps OAuth2 tokens alive; the row lock makes one refresh
    # of a configuration happen once however many keepers run.
    keeper = TokenKeeper(c.oauth2)
    keeper.start()
    try:
        # The same event loop as `mailgate serve` (uvicorn picks uvloop): 5-8 % less CPU per
        # message delivered than asyncio's own loop.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main_loop())
    finally:
        keeper.stop()


@app.command()
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
    from mailgate.services.outbox import Owner

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
    first_start(c, echo=lambda _m: None)
    try:
        with c.session() as db:
            t = _tenant(db, tenant)
            submitted = c.outbox.submit(db, t.id, Owner("cli", None), body)
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
    first_start(c, echo=lambda _m: None)
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
                result = c.outbox.bulk(db, t.id, act, body, progress=bar.update)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
