"""Malformed agent frames (issue 13, point 8): a binary frame or JSON nested deeper than a
parser goes closes that agent's connection cleanly, with a close code and without a
traceback in the server's log. A real uvicorn server and a raw WebSocket client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from sqlalchemy import select
from tests.conftest import make_settings
from tests.live_server import live_server
from websockets.exceptions import ConnectionClosed

from mailgate.adapters.db.tables import SystemSetting, Tenant
from mailgate.bootstrap import Container, build, first_start
from mailgate.entrypoints.agent import websocket_url
from mailgate.entrypoints.api.app import create_app


@pytest.fixture
def c(tmp_path: Path, sqlite_url: str) -> Iterator[Container]:
    container = build(make_settings(tmp_path, sqlite_url, remote_heartbeat_s=2.0))
    first_start(container, echo=lambda _m: None)
    yield container
    container.engine.dispose()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _token(c: Container) -> str:
    with c.session() as db:
        db.get(SystemSetting, "allow_remote_clients").value = True  # type: ignore[union-attr]
        home = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert home is not None
        _row, token = c.remote_clients.create(db, home, "plant-1")
    return token


async def _close_code(url: str, token: str, frames: list[str | bytes]) -> int | None:
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(websocket_url(url), additional_headers=headers) as ws:
        for i, frame in enumerate(frames):
            await ws.send(frame)
            if i == 0 and frame == '{"type": "hello", "v": 1}':
                assert '"welcome"' in str(await ws.recv())
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
    return None


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (['{"type": "hello", "v": 1}', b"\x00\x01binary"], 1003),
        (['{"type": "hello", "v": 1}', "[" * 200_000 + "]" * 200_000], 1007),
        (['{"type": "hello", "v": 1}', "not json"], 1007),
        ([b"binary hello"], 1002),
        (["[" * 200_000 + "]" * 200_000], 1002),
    ],
)
def test_malformed_frames_close_the_connection_without_a_traceback(
    c: Container, frames: list[str | bytes], code: int
) -> None:
    token = _token(c)
    records = Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "mailgate", "")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with live_server(create_app(c)) as url:
            assert asyncio.run(_close_code(url, token, frames)) == code
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    assert not [r for r in records.records if r.exc_info], [r.getMessage() for r in records.records]
