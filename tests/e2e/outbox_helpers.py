"""Helpers for delivery tests: a container on a hand-driven clock, an API client, a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.clock import TestClock
from tests.conftest import Api, make_settings

from mailgate.adapters.db.tables import Message
from mailgate.bootstrap import Container, build, first_start
from mailgate.entrypoints.api.app import create_app
from mailgate.entrypoints.worker import Worker


@dataclass
class Rig:
    api: Api
    c: Container
    clock: TestClock
    admin: str

    def send(self, tenant: str = "home", **body: Any) -> str:
        r = self.api.request("POST", f"/api/v1/tenants/{tenant}/messages", self.admin, json=body)
        assert r.status_code == 202, r.text
        mid: str = r.json()["id"]
        return mid

    def get(self, mid: str, tenant: str = "home") -> dict[str, Any]:
        r = self.api.request("GET", f"/api/v1/tenants/{tenant}/messages/{mid}", self.admin)
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    def post(self, path: str, tenant: str = "home", **kw: Any) -> Any:
        return self.api.request(
            "POST", f"/api/v1/tenants/{tenant}/messages{path}", self.admin, **kw
        )

    def run_once(self) -> int:
        return asyncio.run(Worker(self.c, worker_id="test-worker").run_once())

    def add_server(self, body: dict[str, Any], tenant: str = "home") -> None:
        r = self.api.request(
            "POST", f"/api/v1/tenants/{tenant}/email-servers", self.admin, json=body
        )
        assert r.status_code == 201, r.text

    def row(self, mid: str) -> Message:
        with self.c.sessions() as db:
            row = db.get(Message, mid)
            assert row is not None
            return row


@contextmanager
def rig(tmp_path: Path, database_url: str, **settings: Any) -> Iterator[Rig]:
    clock = TestClock()
    c = build(make_settings(tmp_path, database_url, **settings), clock=clock)
    first_start(c, echo=lambda _m: None)
    try:
        with TestClient(create_app(c)) as client:
            api = Api(client, c)
            yield Rig(api, c, clock, api.admin_token())
    finally:
        c.engine.dispose()
