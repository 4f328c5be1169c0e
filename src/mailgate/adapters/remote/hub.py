"""The connected remote agents of this process and the jobs in flight to them.

The WebSocket endpoint registers each authenticated connection here; the delivery side asks
the hub to run a job on the agent of (tenant, client name) and waits for its answer. A job
whose agent goes away before answering fails with ``AgentLost``, so the caller retries it:
delivery through an agent is at-least-once, like every delivery.

The hub lives on the event loop of the API server. Callers on other threads or loops (a
worker thread) go through ``call`` which hops onto that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailgate.domain.remote import AgentIdentity
from mailgate.schemas.remote import CLOSE_REPLACED

log = logging.getLogger("mailgate.remote")
T = TypeVar("T")


class RemoteError(Exception):
    """A job could not be run on an agent. Always temporary: the message waits and retries.
    ``after_send``: the agent had the job when this happened (it may have carried it out)."""

    after_send = False


class AgentUnavailable(RemoteError):
    def __init__(self, client: str) -> None:
        super().__init__(f"remote client {client} is not connected")


class AgentLost(RemoteError):
    def __init__(self, client: str) -> None:
        super().__init__(f"remote client {client} disconnected before reporting the outcome")


class AgentTimeout(RemoteError):
    def __init__(self, client: str, seconds: float) -> None:
        super().__init__(f"remote client {client} did not report an outcome within {seconds:g} s")


@dataclass(eq=False)
class AgentConnection:
    agent: AgentIdentity
    send_json: Callable[[dict[str, Any]], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]
    address: str | None = None
    version: str | None = None
    max_frame_bytes: int | None = None
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    closed: bool = False


class RemoteHub:
    def __init__(self) -> None:
        self._conns: dict[tuple[int, str], AgentConnection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accepting = False
        """True in a process that serves the agents' WebSocket (set by the app factory); a
        standalone ``mailgate worker`` never holds an agent connection."""

    # ---- connection side (runs on the server's loop) ----------------------------------------

    async def register(self, conn: AgentConnection) -> None:
        self._loop = asyncio.get_running_loop()
        key = (conn.agent.tenant_id, conn.agent.name)
        old = self._conns.get(key)
        self._conns[key] = conn
        if old is not None and old is not conn:
            # A second connection with the same token: most often the agent reconnected
            # before the old TCP connection timed out. The newest one wins.
            self._fail_pending(old)
            await _quiet(old.close(CLOSE_REPLACED, "replaced by a newer connection"))
        log.info(
            "remote client %s/%s connected from %s (agent %s)",
            conn.agent.tenant_name,
            conn.agent.name,
            conn.address,
            conn.version,
        )

    def unregister(self, conn: AgentConnection) -> None:
        key = (conn.agent.tenant_id, conn.agent.name)
        if self._conns.get(key) is conn:
            del self._conns[key]
            log.info("remote client %s/%s disconnected", conn.agent.tenant_name, conn.agent.name)
        self._fail_pending(conn)

    def answer(self, conn: AgentConnection, job_id: str, result: dict[str, Any]) -> bool:
        """Deliver an agent's answer to the waiting job. False for an unknown job id."""
        future = conn.pending.pop(job_id, None)
        if future is None or future.done():
            return False
        future.set_result(result)
        return True

    async def disconnect(self, tenant_id: int, name: str, code: int, reason: str) -> bool:
        conn = self._conns.pop((tenant_id, name), None)
        if conn is None:
            return False
        self._fail_pending(conn)
        await _quiet(conn.close(code, reason))
        return True

    def _fail_pending(self, conn: AgentConnection) -> None:
        conn.closed = True
        for future in conn.pending.values():
            if not future.done():
                future.set_exception(AgentLost(conn.agent.name))
        conn.pending.clear()

    # ---- job side --------------------------------------------------------------------------

    def is_connected(self, tenant_id: int, name: str) -> bool:
        conn = self._conns.get((tenant_id, name))
        return conn is not None and not conn.closed

    def max_frame_bytes(self, tenant_id: int, name: str) -> int | None:
        conn = self._conns.get((tenant_id, name))
        return conn.max_frame_bytes if conn is not None else None

    def connected(self) -> list[AgentIdentity]:
        return [c.agent for c in self._conns.values() if not c.closed]

    async def request(
        self, tenant_id: int, name: str, frame: dict[str, Any], timeout_s: float
    ) -> dict[str, Any]:
        """Send ``frame`` (its ``id`` is set here) to the agent and wait for its answer."""
        conn = self._conns.get((tenant_id, name))
        if conn is None or conn.closed:
            raise AgentUnavailable(name)
        job_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.pending[job_id] = future
        try:
            await conn.send_json({**frame, "id": job_id})
        except Exception as exc:
            conn.pending.pop(job_id, None)
            raise AgentLost(name) from exc
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            timed_out = AgentTimeout(name, timeout_s)
            timed_out.after_send = True
            raise timed_out from None
        except RemoteError as exc:
            exc.after_send = True  # the agent had the job, and went away without a report
            raise
        finally:
            conn.pending.pop(job_id, None)

    async def call(self, coro_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a hub coroutine on the hub's loop, from whatever loop the caller is on."""
        loop = self._loop
        running = asyncio.get_running_loop()
        if loop is None or loop is running or loop.is_closed():
            return await coro_factory()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro_factory(), loop))

    def call_soon_threadsafe_disconnect(
        self, tenant_id: int, name: str, code: int, reason: str
    ) -> None:
        """From a synchronous request handler (a worker thread): close without waiting."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.disconnect(tenant_id, name, code, reason), loop)


async def _quiet(aw: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):  # closing a broken socket is not news
        await aw
