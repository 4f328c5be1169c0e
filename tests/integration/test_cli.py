"""The ``mailgate`` command and the first start, run as subprocesses like an operator would.

Each test works in its own empty directory with a clean environment (no MAILGATE_* from the
caller, no .env), so what it sees is what a new installation sees.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from tests.conftest import password_server, require_postgres
from typer.testing import CliRunner

from mailgate.adapters.db.tables import AuditEntry, Tenant
from mailgate.adapters.secrets import SecretBox, generate_key
from mailgate.bootstrap import build, first_start
from mailgate.config import Settings
from mailgate.domain.errors import SecretKeyError
from mailgate.entrypoints.cli import app as cli_app
from mailgate.schemas.email_server import EmailServerIn
from mailgate.schemas.webhook import WebhookIn

MAILGATE = Path(sys.executable).with_name("mailgate")
START_TIMEOUT_S = 60


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    # Real Argon2id at its cheapest: every command is a new process that may hash a password.
    env.update(
        {
            "MAILGATE_WORKERS": "0",
            "MAILGATE_LOG_LEVEL": "INFO",
            "MAILGATE_PASSWORD_HASH_TIME_COST": "1",
            "MAILGATE_PASSWORD_HASH_MEMORY_KIB": "64",
            **values,
        }
    )
    return env


def mailgate(
    cwd: Path, *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAILGATE), *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Served:
    url: str
    output: list[str]

    @property
    def text(self) -> str:
        return "".join(self.output)


@contextmanager
def serve(cwd: Path, env: dict[str, str]) -> Iterator[Served]:
    """``mailgate serve --port 0`` until it listens; stopped with SIGTERM afterwards."""
    proc = subprocess.Popen(
        [str(MAILGATE), "serve", "--port", "0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            if m:
                url.append(m.group(1))
                found.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not found.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mailgate serve did not start:\n" + "".join(output))
        yield Served(url[0], output)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)


def settings_for(tmp_path: Path, url: str, key: str, **more: str) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        database_url=url,
        secret_key=key,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture
def empty_postgres(tmp_path: Path) -> Iterator[str]:
    """A private, empty PostgreSQL database for a test that runs its own migrations."""
    base = require_postgres()
    name = f"mailgate_cli_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def sign_in(url: str, password: str) -> str:
    r = httpx.post(f"{url}/api/v1/auth/login", json={"username": "admin", "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def test_first_start_creates_database_key_file_admin_and_home(tmp_path: Path) -> None:
    env = clean_env()
    data = tmp_path / "data"
    with serve(tmp_path, env) as served:
        m = re.search(r"with the password\s*\n\s*\n\s+(\S+)\s*\n", served.text)
        assert m, served.text
        password = m.group(1)
        token = sign_in(served.url, password)
        r = httpx.get(f"{served.url}/api/v1/tenants", headers={"Authorization": f"Bearer {token}"})
        assert [t["name"] for t in r.json()["items"]] == ["home"]
        r = httpx.get(
            f"{served.url}/api/v1/tenants/home/email-servers",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.json()["items"] == []
        assert httpx.get(f"{served.url}/healthz").json()["status"] == "ok"
    assert (data / "mailgate.db").is_file()
    key_file = data / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text()
    SecretBox.from_spec(key)  # a usable key
    assert served.text.count(password) == 1  # printed once, and in no log line

    # The second start keeps everything and prints no password.
    with serve(tmp_path, env) as again:
        sign_in(again.url, password)
    assert "password" not in again.text.lower()
    assert key_file.read_text() == key


def test_first_start_with_admin_password_and_secret_key(tmp_path: Path) -> None:
    env = clean_env(
        MAILGATE_ADMIN_PASSWORD="Operator-chosen-pw-1", MAILGATE_SECRET_KEY=generate_key()
    )
    with serve(tmp_path, env) as served:
        sign_in(served.url, "Operator-chosen-pw-1")
    assert "Operator-chosen-pw-1" not in served.text
    assert "MAILGATE_ADMIN_PASSWORD" in served.text
    assert not (tmp_path / "data" / "secret.key").exists()
    assert (tmp_path / "data" / "mailgate.db").is_file()


def test_commands_other_than_serve_and_init_create_no_administrator(tmp_path: Path) -> None:
    """On a fresh data directory, `tenant list` and the other commands used to run the first
    start: they created `admin` with a generated password and printed nothing, so that
    password was lost. Now they only bring the schema up to date; `serve` still sets up."""
    env = clean_env()
    for args in (["tenant", "list"], ["user", "list"], ["migrate"], ["tenant", "create", "acme"]):
        run = mailgate(tmp_path, *args, env=env)
        assert run.returncode == 0, (args, run.stderr)
        assert "password" not in (run.stdout + run.stderr).lower(), args
    assert mailgate(tmp_path, "user", "list", env=env).stdout == ""
    assert mailgate(tmp_path, "tenant", "list", env=env).stdout.splitlines() == ["acme\tacme"]

    with serve(tmp_path, env) as served:
        m = re.search(r"with the password\s*\n\s*\n\s+(\S+)\s*\n", served.text)
        assert m, served.text
        sign_in(served.url, m.group(1))
    listed = mailgate(tmp_path, "tenant", "list", env=env).stdout.splitlines()
    assert listed == ["acme\tacme", "home\tHome"]


def test_init_sets_up_once_and_prints_the_generated_password(tmp_path: Path) -> None:
    env = clean_env()
    first = mailgate(tmp_path, "init", env=env)
    assert first.returncode == 0, first.stderr
    m = re.search(r"with the password\s*\n\s*\n\s+(\S+)\s*\n", first.stdout)
    assert m, first.stdout
    password = m.group(1)
    again = mailgate(tmp_path, "init", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing was created" in again.stdout and password not in again.stdout
    assert mailgate(tmp_path, "tenant", "list", env=env).stdout.splitlines() == ["home\tHome"]

    data = tmp_path / "data"
    key = (data / "secret.key").read_text()
    c = build(settings_for(tmp_path, f"sqlite:///{data / 'mailgate.db'}", key))
    try:
        with c.session() as db:
            _tok, user, _sess = c.identity.login(db, "admin", password, "test")
            assert user.system_admin
    finally:
        c.engine.dispose()

    chosen = tmp_path / "chosen"
    chosen.mkdir()
    run = mailgate(chosen, "init", env=clean_env(MAILGATE_ADMIN_PASSWORD="Operator-chosen-pw-2"))
    assert run.returncode == 0, run.stderr
    assert "MAILGATE_ADMIN_PASSWORD" in run.stdout and "Operator-chosen-pw-2" not in run.stdout


def test_admin_commands(tmp_path: Path, sqlite_url: str) -> None:
    env = clean_env(MAILGATE_DATABASE_URL=sqlite_url, MAILGATE_SECRET_KEY=generate_key())
    run = mailgate(tmp_path, "migrate", env=env)
    assert run.returncode == 0, run.stderr
    assert "newest schema" in run.stdout
    assert mailgate(tmp_path, "init", env=env).returncode == 0
    made = mailgate(tmp_path, "tenant", "create", "acme", "--display-name", "Acme A/S", env=env)
    assert made.returncode == 0, made.stderr
    listed = mailgate(tmp_path, "tenant", "list", env=env)
    assert listed.stdout.splitlines() == ["acme\tAcme A/S", "home\tHome"]

    # Passwords come from stdin or a hidden prompt, never from the command line.
    made = mailgate(
        tmp_path,
        *("user", "create", "olga", "--role", "acme=admin", "--password-stdin"),
        env=env,
        stdin="Olga-secret-pw-9\n",
    )
    assert made.returncode == 0, made.stderr
    prompted = mailgate(
        tmp_path,
        *("user", "create", "per", "--role", "acme=read_only", "--email", "per@example.com"),
        env=env,
        stdin="Per-secret-pw-77\nPer-secret-pw-77\n",
    )
    assert prompted.returncode == 0, prompted.stderr + prompted.stdout
    assert "Per-secret-pw-77" not in prompted.stdout  # the prompt does not echo
    users = mailgate(tmp_path, "user", "list", env=env).stdout
    assert "olga\tacme=admin" in users and "per\tacme=read_only" in users
    assert "admin (system admin)" in users

    key = mailgate(tmp_path, "apikey", "create", "acme", "erp", env=env)
    assert key.returncode == 0, key.stderr
    token = key.stdout.strip()
    assert token.startswith("mgk_")

    # What the commands made works: the users sign in, the key authenticates in its tenant.
    c = build(settings_for(tmp_path, sqlite_url, env["MAILGATE_SECRET_KEY"]))
    try:
        with c.session() as db:
            for name, password in (("olga", "Olga-secret-pw-9"), ("per", "Per-secret-pw-77")):
                _tok, user, _sess = c.identity.login(db, name, password, "test")
                assert user.username == name
            principal = c.identity.authenticate(db, token)
            assert [r.value for r in principal.roles.values()] == ["web_service"]
            # README "Audit log": changes on the command line are in the trail too.
            trail = [
                (e.action, e.actor.split(":")[0], e.source)
                for e in db.scalars(select(AuditEntry).order_by(AuditEntry.id))
            ]
            assert trail == [
                ("tenant.create", "cli", None),
                ("user.create", "cli", None),
                ("user.create", "cli", None),
                ("api_key.create", "cli", None),
            ]
    finally:
        c.engine.dispose()


def test_commands_on_postgres(tmp_path: Path, empty_postgres: str) -> None:
    url = empty_postgres
    env = clean_env(MAILGATE_DATABASE_URL=url, MAILGATE_SECRET_KEY=generate_key())
    assert mailgate(tmp_path, "migrate", env=env).returncode == 0
    assert mailgate(tmp_path, "init", env=env).returncode == 0
    made = mailgate(tmp_path, "tenant", "create", "acme", env=env)
    assert made.returncode == 0, made.stderr
    assert mailgate(tmp_path, "tenant", "list", env=env).stdout.splitlines() == [
        "acme\tacme",
        "home\tHome",
    ]


def test_command_errors(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mistakes exit with 1 and say what is wrong (in-process: the same code, faster)."""
    monkeypatch.chdir(tmp_path)
    env = clean_env(MAILGATE_DATABASE_URL=sqlite_url, MAILGATE_SECRET_KEY=generate_key())
    runner = CliRunner()
    assert runner.invoke(cli_app, ["init"], env=env).exit_code == 0
    cases = [
        (["tenant", "create", "Not Valid"], "", "tenant name"),
        (["tenant", "create", "home"], "", "exists already"),
        (["user", "create", "weak", "--password-stdin"], "short\n", "8 characters"),
        (["user", "create", "x", "--password-stdin"], "\n", "no password"),
        (["user", "create", "r", "--role", "acme=boss"], "", "--role"),
        (
            ["user", "create", "r", "--role", "nope=user", "--password-stdin"],
            "pw-long-one\n",
            "nope",
        ),
        (["user", "create", "admin", "--password-stdin"], "pw-long-one\n", "exists already"),
        (["apikey", "create", "nope", "erp"], "", "not found"),
        (["apikey", "create", "home", "erp", "--role", "root"], "", "--role"),
    ]
    for args, stdin, expected in cases:
        result = runner.invoke(cli_app, args, input=stdin, env=env)
        assert result.exit_code == 1, (args, result.output)
        assert expected in result.output, (args, result.output)


def test_every_command_has_help(tmp_path: Path) -> None:
    top = mailgate(tmp_path, "--help", env=clean_env())
    assert top.returncode == 0
    runner = CliRunner()
    commands = [
        ["serve"],
        ["init"],
        ["migrate"],
        ["keygen"],
        ["tenant"],
        ["tenant", "create"],
        ["tenant", "list"],
        ["user"],
        ["user", "create"],
        ["user", "list"],
        ["apikey"],
        ["apikey", "create"],
        ["secrets"],
        ["secrets", "rotate"],
    ]
    for words in commands:
        assert words[0] in top.stdout
        result = runner.invoke(cli_app, [*words, "--help"], env=clean_env())
        assert result.exit_code == 0, (words, result.output)
        assert "Usage:" in result.output
    assert "--password" not in runner.invoke(cli_app, ["user", "create", "--help"]).output.replace(
        "--password-stdin", ""
    )


def test_secrets_rotate_reencrypts_everything_with_the_first_key(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    db_url = f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}"
    settings = settings_for(tmp_path, db_url, old, admin_password="admin-test-password")
    c = build(settings)
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        home = db.scalar(select(Tenant).where(Tenant.name == "home"))
        rows = []
        for i in range(5):
            body = password_server(f"s{i}")
            body["authentication"]["password"] = f"pw-rotate-{i}"
            rows.append(c.servers.create(db, home, EmailServerIn.model_validate(body)))
        c.servers.store_tokens(rows[0], {"access_token": "at-1", "refresh_token": "rt-1"})
        hook, hook_secret = c.webhooks.create(
            db, home.id, WebhookIn(url="https://example.com/hook")
        )
        hook_id = hook.id
    c.engine.dispose()

    env = clean_env(MAILGATE_DATABASE_URL=db_url, MAILGATE_SECRET_KEY=f"{new},{old}")
    run = mailgate(tmp_path, "secrets", "rotate", env=env)
    assert run.returncode == 0, run.stderr
    assert "7 stored secrets" in run.stdout and "7 re-encrypted" in run.stdout
    assert "pw-rotate" not in run.stdout + run.stderr

    # Only the new key is needed now; the old one alone no longer opens anything.
    for spec, works in ((new, True), (old, False)):
        c = build(settings.model_copy(update={"secret_key": spec}))
        with c.session() as db:
            home = db.scalar(select(Tenant).where(Tenant.name == "home"))
            for i in range(5):
                row = c.servers.get(db, home.id, f"s{i}")
                if works:
                    assert c.servers.secrets_of(row).password == f"pw-rotate-{i}"
                else:
                    with pytest.raises(SecretKeyError):
                        c.servers.secrets_of(row)
            if works:
                assert (
                    c.servers.tokens_of(c.servers.get(db, home.id, "s0"))["refresh_token"] == "rt-1"
                )
                # The webhook's signing secret too (README "Webhooks").
                assert c.webhooks.secret_of(c.webhooks.get(db, home.id, hook_id)) == hook_secret
        c.engine.dispose()

    again = mailgate(tmp_path, "secrets", "rotate", env=env)
    assert "0 re-encrypted, 7 already under the current key" in again.stdout

    # A secret under a key that is no longer configured is reported, not silently dropped.
    stranger = generate_key()
    unknown = mailgate(
        tmp_path,
        "secrets",
        "rotate",
        env=clean_env(MAILGATE_DATABASE_URL=db_url, MAILGATE_SECRET_KEY=stranger),
    )
    assert unknown.returncode == 1
    assert "7 secrets do not decrypt" in unknown.stderr
    assert "email_servers.secrets_enc of row 1" in unknown.stderr


def test_messages_hold_and_release_in_bulk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mailgate messages hold|release` steer the queue by filter, with a progress bar."""
    from mailgate.schemas.message import MessageIn
    from mailgate.services.outbox import Owner, SubmitOptions

    key = generate_key()
    db_url = f"sqlite:///{tmp_path / 'data' / 'mailgate.db'}"
    c = build(settings_for(tmp_path, db_url, key, admin_password="admin-test-password"))
    first_start(c, echo=lambda _m: None)
    with c.session() as db:
        home = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert home is not None
        c.servers.create(db, home, EmailServerIn.model_validate(password_server()))
    with c.session() as db:
        for i in range(3):
            body = MessageIn.model_validate({"to": [f"r{i}@example.net"], "subject": f"m{i}"})
            c.outbox.submitter.submit(
                db, home.id, Owner("cli-test", None), body, SubmitOptions.of(body)
            )
    c.engine.dispose()

    monkeypatch.chdir(tmp_path)
    env = clean_env(MAILGATE_DATABASE_URL=db_url, MAILGATE_SECRET_KEY=key)
    runner = CliRunner()
    held = runner.invoke(cli_app, ["messages", "hold", "home", "--status", "queued"], env=env)
    assert held.exit_code == 0, held.output
    assert "hold: 3 changed, 0 skipped" in held.output
    again = runner.invoke(cli_app, ["messages", "hold", "home", "--status", "held"], env=env)
    assert again.exit_code == 1 and "cannot hold a held message" in again.output
    released = runner.invoke(cli_app, ["messages", "release", "home", "--status", "held"], env=env)
    assert released.exit_code == 0 and "release: 3 changed" in released.output
    c = build(settings_for(tmp_path, db_url, key))
    try:
        with c.sessions() as db:
            entries = list(db.scalars(select(AuditEntry).order_by(AuditEntry.id)))
        assert [(e.action, e.detail) for e in entries] == [
            ("messages.hold", {"filter": {"status": "queued"}, "changed": 3, "skipped": 0}),
            ("messages.release", {"filter": {"status": "held"}, "changed": 3, "skipped": 0}),
        ]
        assert entries[0].actor.startswith("cli")
    finally:
        c.engine.dispose()


def test_processes_starting_together_on_an_empty_postgres(
    tmp_path: Path, empty_postgres: str
) -> None:
    """API replicas and workers started at once: one migrates and creates admin, the others
    wait for it (advisory lock) instead of racing Alembic into duplicate-table errors or
    creating admin twice (two `init` stand for two starting `serve` processes)."""
    env = clean_env(
        MAILGATE_DATABASE_URL=empty_postgres,
        MAILGATE_SECRET_KEY=generate_key(),
        MAILGATE_ADMIN_PASSWORD="Started-together-1",
    )
    procs = [
        subprocess.Popen(
            [str(MAILGATE), *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (["init"], ["user", "list"], ["migrate"], ["init"], ["tenant", "list"])
    ]
    outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    assert all(code == 0 for code, _err in outcomes), outcomes
    engine = create_engine(empty_postgres)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 1
        assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["home"]
    engine.dispose()
