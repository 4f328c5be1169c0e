"""`mailgate tenant export` and `mailgate tenant import`, as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import ADMIN_PASSWORD, password_server
from typer.testing import CliRunner

from mailgate.adapters.db.tables import Tenant
from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import build, first_start
from mailgate.config import Settings
from mailgate.entrypoints.cli import app
from mailgate.schemas.email_server import EmailServerIn

PASSPHRASE = "a long cli passphrase"


def test_cli_export_import_round_trip(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "MAILGATE_DATA_DIR": str(tmp_path / "data"),
        "MAILGATE_DATABASE_URL": sqlite_url,
        "MAILGATE_SECRET_KEY": generate_key(),
        "MAILGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
    }.items():
        monkeypatch.setenv(key, value)
    c = build(Settings())
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        tenant = db.query(Tenant).filter_by(name="home").one()
        c.servers.create(db, tenant, EmailServerIn.model_validate(password_server()))
    runner = CliRunner()

    plain = runner.invoke(app, ["tenant", "export", "home"])
    assert plain.exit_code == 0, plain.output
    assert "S3cret-pw!" not in plain.stdout
    assert json.loads(plain.stdout)["secrets"] is None
    assert "exported 1 e-mail server(s)" in plain.stderr

    result = runner.invoke(
        app, ["tenant", "export", "home", "--passphrase-stdin"], input=PASSPHRASE + "\n"
    )
    assert result.exit_code == 0, result.output
    assert "S3cret-pw!" not in result.stdout
    export_file = tmp_path / "home.json"
    export_file.write_text(result.stdout)

    assert runner.invoke(app, ["tenant", "create", "acme"]).exit_code == 0
    dry = runner.invoke(
        app,
        ["tenant", "import", "acme", str(export_file), "--dry-run", "--passphrase-stdin"],
        input=PASSPHRASE + "\n",
    )
    assert dry.exit_code == 0, dry.output
    assert "created\temail-servers\tDEFAULT" in dry.stdout
    assert "nothing was changed" in dry.stderr
    with c.session() as db:
        acme = db.query(Tenant).filter_by(name="acme").one()
        assert c.servers.list(db, acme.id) == []

    wrong = runner.invoke(
        app,
        ["tenant", "import", "acme", str(export_file), "--passphrase-stdin"],
        input="not the passphrase\n",
    )
    assert wrong.exit_code == 1
    assert "passphrase is wrong" in wrong.stderr

    truncated = tmp_path / "truncated.json"
    truncated.write_text(result.stdout[:100])
    bad = runner.invoke(app, ["tenant", "import", "acme", str(truncated)])
    assert bad.exit_code == 1 and "not valid JSON" in bad.stderr

    done = runner.invoke(
        app,
        ["tenant", "import", "acme", str(export_file), "--passphrase-stdin"],
        input=PASSPHRASE + "\n",
    )
    assert done.exit_code == 0, done.output
    with c.session() as db:
        acme = db.query(Tenant).filter_by(name="acme").one()
        (row,) = c.servers.list(db, acme.id)
        assert c.servers.secrets_of(row).password == "S3cret-pw!"
    c.engine.dispose()
