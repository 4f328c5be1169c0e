"""The Alembic chain: one head, and data upgrades that keep existing rows meaning what they
meant (on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from tests.conftest import require_postgres

from mailgate.adapters.db.engine import alembic_config, make_engine


def test_the_revisions_form_one_chain() -> None:
    script = ScriptDirectory.from_config(alembic_config(make_engine("sqlite://")))
    assert len(script.get_heads()) == 1, script.get_heads()


@pytest.fixture(params=["sqlite", "postgres"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database without any schema yet."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        yield engine
        engine.dispose()
        return
    base = require_postgres()
    name = f"mailgate_m_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(base).set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_configurations_from_before_the_transport_choice_stay_smtp(empty_engine: Engine) -> None:
    cfg = alembic_config(empty_engine)
    command.upgrade(cfg, "0004_oauth2_notices")
    old = {"protocol": "smtp", "host": "smtp.example.com", "port": 587}
    with empty_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO email_servers (name, is_default, config, created_at, updated_at) "
                "VALUES ('OLD', true, :config, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ),
            {"config": json.dumps(old)},
        )
    command.upgrade(cfg, "head")
    with empty_engine.connect() as conn:
        stored = conn.execute(text("SELECT config FROM email_servers")).scalar_one()
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored == {**old, "transport": "smtp"}
    command.downgrade(cfg, "0004_oauth2_notices")
    with empty_engine.connect() as conn:
        stored = conn.execute(text("SELECT config FROM email_servers")).scalar_one()
    assert (json.loads(stored) if isinstance(stored, str) else stored) == old
