"""Which worker takes remote-output mail: only a process that can reach the agent.

A standalone ``mailgate worker`` (no WebSocket endpoint) leaves that mail alone; an API
process takes it when the agent is connected here or nowhere (then it records that the client
is not connected), and leaves it when the agent is connected to another process. Runs on
SQLite and PostgreSQL (the claim query changes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.conftest import make_settings

from mailgate.adapters.db.tables import Message, RemoteClient, SystemSetting, Tenant
from mailgate.bootstrap import Container, build, first_start
from mailgate.entrypoints.worker import Worker
from mailgate.schemas.email_server import EmailServerIn
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import Owner, SubmitOptions


@pytest.fixture
def c(tmp_path: Path, database_url: str) -> Iterator[Container]:
    container = build(make_settings(tmp_path, database_url))
    first_start(container, echo=lambda _m: None)
    yield container
    container.engine.dispose()


def setup(c: Container) -> tuple[str, str]:
    """A direct server (nothing listens: its mail is deferred) and a remote one; a message
    for each. Returns (direct id, remote id)."""
    with c.session() as db:
        db.get(SystemSetting, "allow_remote_clients").value = True  # type: ignore[union-attr]
        home = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert home is not None
        c.remote_clients.create(db, home, "plant-1")
        base = {"host": "127.0.0.1", "port": 9, "starttls": "disabled"}
        defaults = {"message_defaults": {"from_address": "noreply@example.com"}}
        c.servers.create(
            db, home, EmailServerIn.model_validate({"name": "direct", **base, **defaults})
        )
        c.servers.create(
            db,
            home,
            EmailServerIn.model_validate(
                {
                    "name": "remote",
                    **base,
                    **defaults,
                    "remote_output": {"enabled": True, "remote_client": "plant-1"},
                }
            ),
        )
        ids = []
        for server in ("direct", "remote"):
            body = MessageIn.model_validate(
                {"server": server, "to": ["a@example.org"], "subject": server, "text": "x"}
            )
            submitted = c.outbox.submitter.submit(
                db, home.id, Owner("test", None), body, SubmitOptions.of(body)
            )
            ids.append(submitted.message.id)
    return ids[0], ids[1]


def status(c: Container, mid: str) -> tuple[str, str | None]:
    with c.sessions() as db:
        row = db.get(Message, mid)
        assert row is not None
        return row.status, row.last_error


def test_standalone_worker_leaves_remote_mail_to_the_api_process(c: Container) -> None:
    direct, remote = setup(c)
    assert not c.hub.accepting
    assert asyncio.run(Worker(c, worker_id="standalone").run_once()) == 1
    assert status(c, direct)[0] == "deferred"
    assert status(c, remote) == ("queued", None)

    c.hub.accepting = True  # the API process, no agent connected anywhere
    assert asyncio.run(Worker(c, worker_id="api").run_once()) == 1
    assert status(c, remote) == ("deferred", "remote client plant-1 is not connected")


def test_api_process_leaves_mail_of_an_agent_connected_elsewhere(c: Container) -> None:
    _direct, remote = setup(c)
    c.hub.accepting = True
    with c.session() as db:
        row = db.scalar(select(RemoteClient))
        assert row is not None
        row.connected_until = c.clock() + timedelta(minutes=1)
    assert asyncio.run(Worker(c, worker_id="api").run_once()) == 1  # the direct one only
    assert status(c, remote) == ("queued", None)


def test_the_remote_output_worker_of_serve_takes_only_remote_output(c: Container) -> None:
    """``mailgate serve`` delivers from worker processes (which leave remote output alone)
    and runs one worker of its own for the agents' mail: that one takes nothing else."""
    direct, remote = setup(c)
    assert asyncio.run(Worker(c, worker_id="api", remote_only=True).run_once()) == 0
    assert status(c, remote) == ("queued", None)  # not an API process: nothing of its own

    c.hub.accepting = True
    assert asyncio.run(Worker(c, worker_id="api", remote_only=True).run_once()) == 1
    assert status(c, remote) == ("deferred", "remote client plant-1 is not connected")
    assert status(c, direct) == ("queued", None)

    # The agent is connected to another API process: its mail is that process's.
    with c.session() as db:
        row = db.get(Message, remote)
        assert row is not None
        row.status, row.next_attempt_at = "queued", c.clock()
        client = db.scalar(select(RemoteClient))
        assert client is not None
        client.connected_until = c.clock() + timedelta(minutes=1)
    assert asyncio.run(Worker(c, worker_id="api", remote_only=True).run_once()) == 0
    assert status(c, remote)[0] == "queued"
