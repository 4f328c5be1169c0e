"""``mailgate secrets``: the encryption of stored secrets."""

from __future__ import annotations

import sys

import typer

from mailgate.entrypoints.cli.common import _container, _fail

secrets_app = typer.Typer(help="Manage the encryption of stored secrets.", no_args_is_help=True)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Re-encrypt every stored secret with the first key of MAILGATE_SECRET_KEY.

    Put a new key (`mailgate keygen`) in front of the old one (MAILGATE_SECRET_KEY=new,old,
    or both comma-separated in the key file), restart mailgate, run this, then remove the old
    key. Safe to run while mailgate serves, and again after an interruption.
    """
    from mailgate.services.secret_rotation import count_secrets, rotate_all

    c = _container()
    c.installation.upgrade_schema()
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
