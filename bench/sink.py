"""A minimal SMTP sink: accepts everything, keeps nothing but a count and arrival times.

It runs in its own process (so it does not share an interpreter lock with what is being
measured) and is the same for every row of the benchmark. It speaks just enough SMTP for
aiosmtplib: EHLO (with PIPELINING, 8BITMIME, SIZE), MAIL, RCPT, DATA, RSET, NOOP, QUIT.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import re
import time
from multiprocessing.connection import Connection

_BENCH_ID = re.compile(rb"\r\nX-Bench-Id: ([0-9a-z-]+)\r\n", re.I)


class _Stats:
    def __init__(self) -> None:
        self.count = 0
        self.arrivals: dict[str, float] = {}


class _Sink(asyncio.Protocol):
    def __init__(self, stats: _Stats) -> None:
        self.stats = stats
        self.buf = b""
        self.in_data = False
        self.data: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    # Keep the tail that may hold a split terminator.
                    if len(self.buf) > 8:
                        self.data.append(self.buf[:-8])
                        self.buf = self.buf[-8:]
                    break
                self.data.append(self.buf[: end + 2])
                self.buf = self.buf[end + 5 :]
                self.in_data = False
                self._message(b"".join(self.data))
                self.data = []
                out.append(b"250 2.0.0 queued\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                break
            line, self.buf = self.buf[:end], self.buf[end + 2 :]
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                out.append(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
            elif verb == b"DATA":
                self.in_data = True
                out.append(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                self.t.write(b"".join(out))
                self.t.close()
                return
            else:
                out.append(b"250 ok\r\n")
        if out:
            self.t.write(b"".join(out))

    def _message(self, content: bytes) -> None:
        now = time.time()
        self.stats.count += 1
        match = _BENCH_ID.search(content, 0, 4096)
        if match:
            self.stats.arrivals[match.group(1).decode()] = now


def _serve(conn: Connection) -> None:
    async def main() -> None:
        stats = _Stats()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Sink(stats), "127.0.0.1", 0, backlog=256)
        conn.send(server.sockets[0].getsockname()[1])
        while True:
            ready = await loop.run_in_executor(None, conn.poll, 0.05)
            if not ready:
                continue
            cmd = conn.recv()
            if cmd == "count":
                conn.send(stats.count)
            elif cmd == "arrivals":
                conn.send(dict(stats.arrivals))
            elif cmd == "reset":
                stats.count = 0
                stats.arrivals.clear()
                conn.send(True)
            elif cmd == "stop":
                server.close()
                conn.send(True)
                return

    asyncio.run(main())


class Sink:
    """The sink process, driven from the benchmark."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        self.port: int = self.conn.recv()

    def _ask(self, cmd: str) -> object:
        self.conn.send(cmd)
        return self.conn.recv()

    @property
    def count(self) -> int:
        value = self._ask("count")
        assert isinstance(value, int)
        return value

    def arrivals(self) -> dict[str, float]:
        value = self._ask("arrivals")
        assert isinstance(value, dict)
        return value

    def reset(self) -> None:
        self._ask("reset")

    def wait_for(self, n: int, timeout: float = 600) -> float:
        """Block until ``n`` messages arrived; return the time (monotonic) it happened."""
        deadline = time.monotonic() + timeout
        while self.count < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sink: {self.count} of {n} arrived")
            time.sleep(0.01)
        return time.monotonic()

    def stop(self) -> None:
        self._ask("stop")
        self.proc.join(5)
