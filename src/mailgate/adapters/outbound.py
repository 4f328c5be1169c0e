"""Connecting where a tenant points mailgate, within the outbound destination policy
(``domain/outbound.py``) and a total deadline.

Every connection a tenant can aim resolves its host here and connects to an address that was
checked, never to the name again (a second lookup could answer differently: DNS
rebinding). Used by the SMTP client (``resolve_allowed``), and by every HTTP client made for
token endpoints and mail APIs (``guarded_transport``/``async_guarded_transport``: an
httpcore network backend that does the same inside httpx). Webhook delivery uses the same.

``guarded_transport(..., total_s=...)`` also bounds a synchronous client's whole exchange:
httpx's timeouts are per read, so an endpoint that drips a byte every few seconds would
otherwise hold the caller for as long as it likes. Async callers bound their requests with
``asyncio.timeout`` instead (the event loop can cancel; a thread cannot).

Requests through these transports ignore ``HTTP(S)_PROXY``: through a proxy the policy could
not be checked (README "Security model").
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import httpcore
import httpx

from mailgate.domain.outbound import OutboundPolicy

PolicySource = Callable[[], OutboundPolicy]
"""The installation's current policy (it may change while mailgate runs)."""
AddrInfo = tuple[Any, ...]
"""One ``socket.getaddrinfo`` entry: (family, type, proto, canonname, sockaddr)."""


class DestinationDenied(PermissionError):
    """Every address the host resolves to is denied by the outbound policy: nothing was
    sent to it. The text says which address and which network. An ``OSError``, so that
    code that handles network failures handles it too."""


def denied_reason(exc: BaseException | None) -> str | None:
    """The policy's refusal somewhere in ``exc``'s chain of causes (httpx wraps it twice)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DestinationDenied):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def allowed(host: str, infos: Iterable[AddrInfo], policy: OutboundPolicy) -> list[AddrInfo]:
    """The entries of ``infos`` the policy allows, in order; ``DestinationDenied`` when none
    is."""
    infos = list(infos)
    kept: list[AddrInfo] = []
    refusals: list[str] = []
    for info in infos:
        refusal = policy.refusal(str(info[4][0]), host)
        if refusal is None:
            kept.append(info)
        else:
            refusals.append(refusal)
    if not kept and refusals:
        raise DestinationDenied(refusals[0])
    return kept


async def resolve_allowed(
    host: str, port: int, policy: OutboundPolicy, *, timeout: float | None = None
) -> list[AddrInfo]:
    """Resolve ``host`` (an IP address resolves to itself) and keep the allowed addresses.
    Raises ``socket.gaierror``, ``TimeoutError`` or ``DestinationDenied``."""
    with anyio.fail_after(timeout):
        infos = await anyio.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    return allowed(host, infos, policy)


def resolve_allowed_sync(
    host: str, port: int, policy: OutboundPolicy, *, timeout: float | None = None
) -> list[AddrInfo]:
    """``resolve_allowed`` for threads: the lookup runs in a helper thread so that a slow
    resolver cannot outlast ``timeout``."""
    result: list[Any] = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM))
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=lookup, name="resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        raise TimeoutError(f"resolving {host!r} took longer than {timeout:g} s")
    if isinstance(result[0], BaseException):
        raise result[0]
    return allowed(host, result[0], policy)


# ---- httpcore network backends: the policy (and a deadline) inside httpx ----------------------


DEADLINE_PASSED = "no complete answer within the total deadline"


def _remaining(deadline: float | None, timeout: float | None) -> float | None:
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout(DEADLINE_PASSED)
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """Every read and write gets at most the time left until the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self.inner.read(max_bytes, _remaining(self.deadline, timeout))
        except httpcore.ReadTimeout:
            if time.monotonic() >= self.deadline:
                raise httpcore.ReadTimeout(DEADLINE_PASSED) from None
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self.inner.write(buffer, _remaining(self.deadline, timeout))
        except httpcore.WriteTimeout:
            if time.monotonic() >= self.deadline:
                raise httpcore.WriteTimeout(DEADLINE_PASSED) from None
            raise

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.inner.start_tls(
            ssl_context, server_hostname, _remaining(self.deadline, timeout)
        )
        return _DeadlineStream(stream, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, connecting only to addresses the policy allows and
    (with ``total_s``) ending every read and write at one deadline, counted from the
    backend's creation: make one per client, one client per exchange."""

    def __init__(self, policy: PolicySource, total_s: float | None = None) -> None:
        self.policy = policy
        self.inner = httpcore.SyncBackend()
        self.deadline = None if total_s is None else time.monotonic() + total_s

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        budget = _remaining(self.deadline, timeout)
        try:
            infos = resolve_allowed_sync(host, port, self.policy(), timeout=budget)
        except DestinationDenied as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        error: Exception | None = None
        for info in infos:
            try:
                stream = self.inner.connect_tcp(
                    str(info[4][0]),
                    port,
                    _remaining(self.deadline, timeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return stream if self.deadline is None else _DeadlineStream(stream, self.deadline)
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not a destination")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's async backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: PolicySource) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await resolve_allowed(host, port, self.policy(), timeout=timeout)
        except DestinationDenied as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} took too long") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        error: Exception | None = None
        for info in infos:
            try:
                return await self.inner.connect_tcp(
                    str(info[4][0]), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def guarded_transport(
    verify: ssl.SSLContext, policy: PolicySource, *, total_s: float | None = None
) -> httpx.HTTPTransport:
    """An httpx transport for a synchronous client: the policy at connect time, and with
    ``total_s`` one deadline for everything the client does (make one per exchange)."""
    transport = httpx.HTTPTransport(verify=verify)
    # httpx has no parameter for httpcore's network backend; the pool is what it would build.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=verify, network_backend=GuardedBackend(policy, total_s)
    )
    return transport


def async_guarded_transport(
    verify: ssl.SSLContext, policy: PolicySource
) -> httpx.AsyncHTTPTransport:
    """An httpx transport for an async client, connecting only where the policy allows."""
    transport = httpx.AsyncHTTPTransport(verify=verify)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify, network_backend=AsyncGuardedBackend(policy)
    )
    return transport
