"""The ``mailgate`` command: serve | init | worker | smtp | agent | send | messages | migrate |
tenant | user | apikey | keygen | secrets | server, one module per command group.

Passwords are read from a prompt or from standard input, never from the command line (argv
is visible to every user of the machine through ``ps``).
"""

from __future__ import annotations

import typer

from mailgate.entrypoints.cli.agent import agent
from mailgate.entrypoints.cli.messages import messages_app, send
from mailgate.entrypoints.cli.secrets import secrets_app
from mailgate.entrypoints.cli.serve import init, keygen, migrate, serve
from mailgate.entrypoints.cli.servers import server_app
from mailgate.entrypoints.cli.smtp import smtp
from mailgate.entrypoints.cli.tenants import tenant_app
from mailgate.entrypoints.cli.users import apikey_app, user_app
from mailgate.entrypoints.cli.worker import worker

app = typer.Typer(help="mailgate: a multi-tenant outbound e-mail gateway.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(messages_app, name="messages")
app.add_typer(user_app, name="user")
app.add_typer(apikey_app, name="apikey")
app.add_typer(server_app, name="server")
app.add_typer(secrets_app, name="secrets")
for command in (serve, init, agent, migrate, keygen, worker, smtp, send):
    app.command()(command)


def main() -> None:
    app()
