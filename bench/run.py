"""mailgate delivery benchmark, side by side with Postfix (bench/README.md). One run, one
machine, one sink for every row.

    bash bench/setup.sh     # Debian's postfix when missing; PostgreSQL up
    .venv/bin/python bench/run.py [--n 5000] [--repeat 3] [--pg-url URL|none] [--scale SPEC]

(a) raw aiosmtplib, 8 reused connections: the ceiling of the client library;
(b) mailgate's worker draining N pre-queued messages;
(f) (b) beside another configuration that is paused or tarpitted, as a ratio of (b)
    (bench/fairness.py);
(c) end to end: N messages submitted through the HTTP API while ``mailgate serve`` delivers
    them: the default layout (its worker processes), 2 worker processes, and 2 on PostgreSQL;
    and the default layout fed through its SMTP submission listener instead (c_smtp);
Postfix: a private instance relaying to the sink, fed over SMTP by aiosmtplib;
(d) idle-queue latency from the request (and from the 202) to the sink;
scale: 10k / 100k / 1M queued, drained by ``mailgate serve``: rate and peak RSS.

Results are printed and written to bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import uvloop
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fairness import row_beside
from postfix import PrivatePostfix
from postfix import available as postfix_available
from postfix import version as postfix_version
from sink import Sink

from mailgate.adapters.db.tables import Message, MessageContent, Tenant
from mailgate.adapters.secrets import generate_key
from mailgate.adapters.smtp.transport import SmtpTransport
from mailgate.bootstrap import Container, build, first_start
from mailgate.config import Settings
from mailgate.domain.messages import new_message_id
from mailgate.entrypoints.worker import Worker
from mailgate.schemas.email_server import EmailServerIn, ResolvedServer, ServerSecrets
from mailgate.schemas.message import MessageIn
from mailgate.services.outbox import Owner, SubmitOptions

# 128 lines of 76 characters + line ends: 10 KB of 7-bit text (no transfer encoding).
BODY = ("".join(f"{i:04d} " + "x" * 71 + "\n" for i in range(128)))[: 10 * 1024]
CONNECTIONS = 8
ADMIN_PASSWORD = "bench-admin-password"


def server_config(port: int) -> dict[str, Any]:
    return {
        "name": "SINK",
        "protocol": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "starttls": "disabled",
        "helo_name": "bench.mailgate.test",
        "timeouts": {"connect_s": 30, "command_s": 120},
        "limits": {"max_connections": CONNECTIONS},
        "message_defaults": {"from_address": "bench@example.com"},
    }


def raw_message(i: int) -> bytes:
    return (
        f"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: raw {i}\r\n"
        f"Message-ID: <raw{i}@example.com>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + BODY.replace("\n", "\r\n")
    ).encode()


def run_loop(coro: Coroutine[Any, Any, float]) -> float:
    """(a) and (b) run on uvloop, the event loop of `mailgate serve` and `mailgate worker`."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# ---- (a) raw aiosmtplib ---------------------------------------------------------------------


async def over_connections(
    n: int, conn: Callable[[asyncio.Queue[bytes]], Awaitable[None]]
) -> float:
    """Seconds for ``CONNECTIONS`` runs of ``conn`` at once to send ``n`` messages from one
    queue (rows (a) and (t): the same messages, connections and clock, another client)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(raw_message(i))
    started = time.perf_counter()
    await asyncio.gather(*(conn(queue) for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


async def raw_client(port: int, n: int) -> float:
    async def conn(queue: asyncio.Queue[bytes]) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            m = queue.get_nowait()
            await smtp.sendmail("bench@example.com", ["sink@example.com"], m)
        await smtp.quit()

    return await over_connections(n, conn)


# ---- (t) mailgate's SMTP transport alone -------------------------------------------------------


async def transport_alone(port: int, n: int) -> float:
    """The worker's SMTP client without the outbox: mailgate's ``SmtpTransport`` (the
    sessions row (b) opens, PIPELINING included) sending the same messages over the same
    8 connections, nothing read from or written to a database. (b) against (t) is what the
    outbox's durable bookkeeping costs (claim, started mark, result, attempt row)."""
    config = EmailServerIn.model_validate(server_config(port))
    server = ResolvedServer(1, 1, "SINK", config, ServerSecrets())
    transport = SmtpTransport()

    async def conn(queue: asyncio.Queue[bytes]) -> None:
        session = await transport.open(server, None)
        while not queue.empty():
            m = queue.get_nowait()
            result = await session.send("bench@example.com", ["sink@example.com"], m)
            assert result.code == 250, result
        await session.close()

    return await over_connections(n, conn)


# ---- (b) the worker draining a pre-queued outbox ----------------------------------------------


def container(data_dir: Path, database_url: str | None) -> Container:
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        secret_key=generate_key(),
        admin_password=ADMIN_PASSWORD,
        workers=0,
        _env_file=None,  # type: ignore[call-arg]
    )
    c = build(settings)
    first_start(c, echo=lambda _m: None)
    return c


def prequeue(
    c: Container, port: int, n: int, server_exists: bool = False, body: str = BODY
) -> None:
    """Queue ``n`` messages: the first through the outbox service, the rest as copies of its
    rows (bulk inserts of 20,000 per transaction; building them is not what is measured)."""
    with c.session() as db:
        tenant = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert tenant is not None
        if not server_exists:
            c.servers.create(db, tenant, EmailServerIn.model_validate(server_config(port)))
        message = MessageIn.model_validate(
            {"server": "SINK", "to": ["sink@example.com"], "subject": "b", "text": body}
        )
        first = c.outbox.submitter.submit(
            db, tenant.id, Owner("bench", None), message, SubmitOptions.of(message)
        ).message
        content = db.get(MessageContent, first.id)
        assert content is not None
        template = {col.key: getattr(first, col.key) for col in Message.__table__.columns}
        raw = content.raw
    for start in range(1, n, 20000):
        rows, contents = [], []
        for _ in range(start, min(n, start + 20000)):
            mid = new_message_id()
            rows.append({**template, "id": mid})
            contents.append({"message_id": mid, "raw": raw})
        with c.session() as db:
            db.execute(insert(Message), rows)
            db.execute(insert(MessageContent), contents)


async def drain(c: Container, sink: Sink, n: int) -> float:
    worker = Worker(c, worker_id="bench")
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(worker.run(stop))
    while worker.delivered < n:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    assert sink.count >= n
    return elapsed


# ---- (c), (d), (e): a real `mailgate serve` ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    """``root`` and every process under it (children of all its threads: the supervisor
    starts restarted workers from its own thread)."""
    found, todo = [root], [root]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of the processes together (shared pages counted once)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Serve:
    """``mailgate serve`` as a user starts it: ``workers`` None is the default layout
    (``MAILGATE_WORKERS`` unset: ``auto``), else that many worker processes."""

    def __init__(
        self,
        data_dir: Path,
        secret_key: str,
        database_url: str | None,
        workers: int | None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.smtp_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
        env.update(
            {
                "MAILGATE_DATA_DIR": str(data_dir),
                "MAILGATE_SECRET_KEY": secret_key,
                "MAILGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "MAILGATE_LOG_LEVEL": "WARNING",
                # Every serve has its SMTP listener (as by default), on a port of its own.
                "MAILGATE_SMTP_LISTEN": f"127.0.0.1:{self.smtp_port}",
            }
        )
        env.update(extra_env or {})
        if workers is not None:
            env["MAILGATE_WORKERS"] = str(workers)
        if database_url:
            env["MAILGATE_DATABASE_URL"] = database_url
        self.log = (data_dir / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate.entrypoints.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("mailgate serve did not start; see serve.log")
            time.sleep(0.2)
        expected = 1 + (workers if workers is not None else Settings().worker_processes)
        while len(self.pids()) < expected:  # the worker processes are up
            if time.monotonic() > deadline:
                raise RuntimeError("the worker processes did not start")
            time.sleep(0.2)
        time.sleep(1.0)  # and done importing
        r = httpx.post(
            self.url + "/api/v1/auth/login",
            json={"username": "admin", "password": ADMIN_PASSWORD},
        )
        self.headers = {"Authorization": f"Bearer {r.json()['token']}"}
        self.api_key = ""

    def create_server_and_key(self, sink_port: int) -> None:
        """The sink as e-mail server SINK, and a workflow's API key (role web_service)."""
        r = httpx.post(
            f"{self.url}/api/v1/tenants/home/email-servers",
            headers=self.headers,
            json=server_config(sink_port),
        )
        assert r.status_code == 201, r.text
        r = httpx.post(
            f"{self.url}/api/v1/tenants/home/api-keys",
            headers=self.headers,
            json={"name": "bench", "role": "web_service"},
        )
        assert r.status_code == 201, r.text
        self.api_key = r.json()["token"]

    def pids(self) -> list[int]:
        """serve and its worker processes."""
        return tree_pids(self.proc.pid)

    def peak_rss_mb(self) -> float:
        """Peak RSS (VmHWM) of serve plus that of each worker process."""
        return sum(status_kb(pid, "VmHWM") for pid in self.pids()) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def submit_all(serve: Serve, n: int, concurrency: int = 16) -> dict[str, Any]:
    """``n`` submissions from ``concurrency`` keep-alive connections, by ``loadgen.py`` in its
    own process (a lean client: httpx cost more CPU per request than the server)."""
    body = json.dumps({"server": "SINK", "to": ["sink@example.com"], "subject": "c", "text": BODY})
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("loadgen.py")),
                f"{serve.url}/api/v1/tenants/home/messages",
                serve.api_key,
                str(n),
                str(concurrency),
                f.name,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def submit_smtp(serve: Serve, n: int, concurrency: int = 16) -> dict[str, Any]:
    """``n`` messages through serve's SMTP submission listener, by ``smtpgen.py`` (aiosmtplib,
    as the Postfix row) in its own process: ``concurrency`` connections, each signed in once
    (tenant ``home``, the workflow's API key) and sending message after message; the
    ``X-Mailgate-Server`` header picks the configuration as ``"server"`` does in (c)."""
    raw = b"X-Mailgate-Server: SINK\r\n" + raw_message(0)
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        f.write(raw)
        f.flush()
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("smtpgen.py")),
                "127.0.0.1",
                str(serve.smtp_port),
                str(n),
                str(concurrency),
                f.name,
                "home",
                serve.api_key,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def end_to_end(serve: Serve, sink: Sink, n: int, via: str = "http") -> dict[str, Any]:
    """Row (c): from the first request until the sink has all ``n``; CPU per message of
    mailgate (serve and its worker processes together), the sink and the client. ``via``
    ``smtp``: submitted through the SMTP listener instead of the HTTP API."""
    assert sink.proc.pid is not None
    pids = serve.pids()
    before = {pid: cpu_s(pid) for pid in pids}
    sink_before = cpu_s(sink.proc.pid)
    started = time.perf_counter()
    submitted = submit_smtp(serve, n) if via == "smtp" else submit_all(serve, n)
    sink.wait_for(n)
    elapsed = time.perf_counter() - started
    per_process = [(cpu_s(pid) - before[pid]) * 1000 / n for pid in pids]
    return {
        "per_s": n / elapsed,
        "submit_per_s": n / submitted["seconds"],
        "errors": submitted["errors"],
        "first_error": submitted.get("first_error"),
        "cpu_ms_per_msg": {
            "mailgate": round(sum(per_process), 3),
            "serve": round(per_process[0], 3),
            "workers": [round(v, 3) for v in per_process[1:]],
            "sink": round((cpu_s(sink.proc.pid) - sink_before) * 1000 / n, 3),
            "client": round(submitted["client_cpu_s"] * 1000 / n, 3),
        },
        "pss_mb": round(pss_mb(pids), 1),
    }


def idle_latency(serve: Serve, sink: Sink, samples: int) -> tuple[list[float], list[float]]:
    """(d): one submission at a time; from the request (its first byte on the socket) and
    from the ``202`` to the sink having the message. A lean client (a keep-alive socket,
    the request built before the clock starts), as for (c): httpx's own building of the
    request and JSON encoding of the body were counted as latency before (1-5 ms a
    request on a slow machine)."""
    path = "/api/v1/tenants/home/messages"
    from_request, from_202 = [], []
    with socket.create_connection(("127.0.0.1", serve.port)) as sock:
        replies = sock.makefile("rb")
        for i in range(samples):
            bench_id = f"lat-{i}"
            body = json.dumps(
                {
                    "server": "SINK",
                    "to": ["sink@example.com"],
                    "subject": "d",
                    "text": BODY,
                    "headers": {"X-Bench-Id": bench_id},
                }
            ).encode()
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{serve.port}\r\n"
                f"Authorization: Bearer {serve.api_key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            t_request = time.time()
            sock.sendall(request)
            status = replies.readline()
            length = 0
            while (line := replies.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = replies.read(length)
            t_202 = time.time()
            assert status.split()[1] == b"202", (status, answer)
            arrived = _arrival(sink, bench_id)
            from_request.append((arrived - t_request) * 1000)
            from_202.append((arrived - t_202) * 1000)
            time.sleep(0.05)  # the queue is idle again before the next one
    return from_request, from_202


def _arrival(sink: Sink, bench_id: str) -> float:
    """When the sink received the message with ``X-Bench-Id: bench_id`` (time.time)."""
    deadline = time.monotonic() + 30
    while (arrived := sink.arrivals().get(bench_id)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(bench_id)
        time.sleep(0.001)
    return arrived


def idle_latency_httpx(serve: Serve, sink: Sink, samples: int) -> tuple[list[float], list[float]]:
    """(d) as measured before: the clock starts before httpx builds the request."""
    url = f"{serve.url}/api/v1/tenants/home/messages"
    from_request, from_202 = [], []
    headers = {"Authorization": f"Bearer {serve.api_key}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for i in range(samples):
            bench_id = f"latx-{i}"
            body = {
                "server": "SINK",
                "to": ["sink@example.com"],
                "subject": "d",
                "text": BODY,
                "headers": {"X-Bench-Id": bench_id},
            }
            t_request = time.time()
            r = client.post(url, json=body)
            t_202 = time.time()
            assert r.status_code == 202, r.text
            arrived = _arrival(sink, bench_id)
            from_request.append((arrived - t_request) * 1000)
            from_202.append((arrived - t_202) * 1000)
            time.sleep(0.05)
    return from_request, from_202


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row_a(sink: Sink, n: int) -> float:
    sink.reset()
    elapsed = run_loop(raw_client(sink.port, n))
    sink.wait_for(n)
    return n / elapsed


def row_t(sink: Sink, n: int) -> float:
    sink.reset()
    elapsed = run_loop(transport_alone(sink.port, n))
    sink.wait_for(n)
    return n / elapsed


def row_b_unpipelined(sink: Sink, n: int) -> float:
    """(b) with PIPELINING not used (the sink still offers it): what pipelining changed."""
    from mailgate.adapters.smtp import session as smtp_session

    post_init = smtp_session.SmtpSession.__post_init__

    def one_at_a_time(self: smtp_session.SmtpSession) -> None:
        post_init(self)
        self._mail.pipelined = None

    smtp_session.SmtpSession.__post_init__ = one_at_a_time  # type: ignore[method-assign]
    try:
        return row_b(sink, n, None)
    finally:
        smtp_session.SmtpSession.__post_init__ = post_init  # type: ignore[method-assign]


def row_b(sink: Sink, n: int, database_url: str | None) -> float:
    sink.reset()
    with tempfile.TemporaryDirectory() as tmp:
        c = container(Path(tmp), database_url)
        prequeue(c, sink.port, n)
        elapsed = run_loop(drain(c, sink, n))
        c.engine.dispose()
    return n / elapsed


def row_c(
    sink: Sink,
    n: int,
    database_url: str | None,
    workers: int | None,
    samples: int = 0,
    via: str = "http",
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(c) with ``workers`` worker processes (None: the default); with ``samples`` also (d)
    on the same installation; ``via`` ``smtp``: fed through the SMTP listener."""
    sink.reset()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        c = container(data, database_url)
        secret = c.settings.secret_key or ""
        c.engine.dispose()
        serve = Serve(data, secret, database_url, workers)
        try:
            serve.create_server_and_key(sink.port)
            row = end_to_end(serve, sink, n, via)
            latency = None
            if samples:
                sink.reset()
                lat_req, lat_202 = idle_latency(serve, sink, samples)
                sink.reset()
                httpx_req, _x = idle_latency_httpx(serve, sink, samples)
                latency = {
                    "from_request_p50": pct(lat_req, 50),
                    "from_request_p99": pct(lat_req, 99),
                    "from_202_p50": pct(lat_202, 50),
                    "from_202_p99": pct(lat_202, 99),
                    "samples": len(lat_req),
                    "httpx_from_request_p50": pct(httpx_req, 50),
                    "httpx_from_request_p99": pct(httpx_req, 99),
                }
        finally:
            serve.stop()
    return row, latency


def row_postfix(sink: Sink, n: int, concurrency: int = 16) -> dict[str, Any]:
    """(p) a private Postfix relaying to the sink, fed over SMTP by ``smtpgen.py``
    (aiosmtplib) from ``concurrency`` connections: from the first message until the sink
    has all ``n``; CPU per message of every Postfix process, the sink and the client."""
    sink.reset()
    assert sink.proc.pid is not None
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-postfix-") as tmp:
        pf = PrivatePostfix(Path(tmp), sink.port, connections=CONNECTIONS)
        pf.start()
        try:
            with tempfile.NamedTemporaryFile(suffix=".eml") as f:
                f.write(raw_message(0))
                f.flush()
                cpu_before, sink_before = pf.cpu_s(), cpu_s(sink.proc.pid)
                started = time.perf_counter()
                out = subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).with_name("smtpgen.py")),
                        "127.0.0.1",
                        str(pf.port),
                        str(n),
                        str(concurrency),
                        f.name,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                sink.wait_for(n)
                elapsed = time.perf_counter() - started
            injected = json.loads(out.stdout)
            pss = pss_mb(pf.pids())
            cpu = (pf.cpu_s() - cpu_before) * 1000 / n
        finally:
            pf.stop()
    return {
        "per_s": n / elapsed,
        "submit_per_s": n / injected["seconds"],
        "errors": injected["errors"],
        "first_error": injected.get("first_error"),
        "cpu_ms_per_msg": {
            "postfix": round(cpu, 3),
            "sink": round((cpu_s(sink.proc.pid) - sink_before) * 1000 / n, 3),
            "client": round(injected["client_cpu_s"] * 1000 / n, 3),
        },
        "pss_mb": round(pss, 1),
    }


def row_scale(sink: Sink, queued: int, body_bytes: int, window_s: float) -> dict[str, Any]:
    """``queued`` messages waiting, then ``mailgate serve`` (default layout) started: how
    fast it drains them (all of them, or what it delivered in ``window_s``), and the peak
    RSS of its processes."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        c = container(data, None)
        secret = c.settings.secret_key or ""
        t = time.perf_counter()
        prequeue(c, sink.port, queued, body=BODY[:body_bytes])
        c.engine.dispose()
        queue_s = time.perf_counter() - t
        sink.reset()
        started = time.perf_counter()
        serve = Serve(data, secret, None, None)
        try:
            for _ in range(3):  # the API answers meanwhile
                httpx.get(
                    f"{serve.url}/api/v1/tenants/home/messages?limit=100",
                    headers=serve.headers,
                    timeout=60,
                )
            deadline = started + window_s
            while sink.count < queued and time.perf_counter() < deadline:
                time.sleep(0.2)
            delivered = sink.count
            elapsed = time.perf_counter() - started
            rss = serve.peak_rss_mb()
            pss = pss_mb(serve.pids())
        finally:
            serve.stop()
    print(
        f"    {queued} queued ({body_bytes} B bodies, queued in {queue_s:.0f} s): delivered "
        f"{delivered} in {elapsed:.0f} s (from serve's start) = {delivered / elapsed:.0f} "
        f"msg/s, peak RSS {rss:.0f} MB",
        flush=True,
    )
    return {
        "queued": queued,
        "body_bytes": body_bytes,
        "delivered": delivered,
        "drain_per_s": delivered / elapsed,
        "seconds_from_start": elapsed,
        "peak_rss_mb_all_processes": round(rss, 1),
        "pss_mb_at_end": round(pss, 1),
    }


def pg_database(base_url: str) -> tuple[str, Any]:
    """A database of the benchmark's own on the server of ``base_url``; returns its URL
    and a function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"mailgate_bench_{os.getpid()}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(base_url).set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of every throughput row; each row's median is reported (the machine's "
        "speed drifts between rounds, so the rows of one round are measured back to back)",
    )
    ap.add_argument(
        "--pg-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server for the PostgreSQL row (a database of its own is created "
        "and dropped); 'none' to skip the row",
    )
    ap.add_argument(
        "--scale",
        default="10000:10240,100000:10240,1000000:1024",
        help="scale rows QUEUED:BODY_BYTES,...; '' to skip",
    )
    ap.add_argument(
        "--scale-window",
        type=float,
        default=300.0,
        help="a scale row measures until all are delivered or this many seconds passed",
    )
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    n = args.n
    if not postfix_available():
        sys.exit("postfix is not installed: run bench/setup.sh (apt-get install postfix)")
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "postfix": postfix_version(),
        "default_worker_processes": Settings().worker_processes,
        "n": n,
        "rounds": args.repeat,
    }
    pg_url, drop_pg = (None, None)
    if args.pg_url != "none":
        pg_url, drop_pg = pg_database(args.pg_url)
    rounds: list[dict[str, Any]] = []
    sink = Sink()
    try:
        print(f"sink on port {sink.port}; {n} messages of {len(raw_message(0))} bytes", flush=True)
        for i in range(args.repeat):
            r: dict[str, Any] = {"load": [round(x, 2) for x in os.getloadavg()]}
            r["a"] = row_a(sink, n)
            r["t"] = row_t(sink, n)
            r["b"] = row_b(sink, n, None)
            r["b_unpipelined"] = row_b_unpipelined(sink, n)
            r["b_beside_paused"] = row_beside(sink, n, "paused")
            r["b_beside_tarpit"] = row_beside(sink, n, "tarpit")
            samples = args.latency_samples if i == args.repeat - 1 else 0
            r["c_default"], latency = row_c(sink, n, None, None, samples=samples)
            if latency is not None:
                results["d_latency_ms"] = latency
            r["c_2_workers"], _ = row_c(sink, n, None, 2)
            r["c_smtp"], _ = row_c(sink, n, None, None, via="smtp")
            r["postfix"] = row_postfix(sink, n)
            if pg_url is not None:
                r["c_postgres"], _ = row_c_pg(sink, n, pg_url)
            rounds.append(r)
            print(f"round {i + 1} (load {r['load']}): " + summary(r), flush=True)
        results["rounds_detail"] = rounds
        results["scale"] = []
        for spec in filter(None, args.scale.split(",")):
            queued, body_bytes = (int(x) for x in spec.split(":"))
            results["scale"].append(row_scale(sink, queued, body_bytes, args.scale_window))
    finally:
        sink.stop()
        if drop_pg is not None:
            drop_pg()
    results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report(results, rounds, n)
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


def row_c_pg(sink: Sink, n: int, pg_url: str) -> tuple[dict[str, Any], None]:
    """(c) on PostgreSQL: serve + 2 worker processes, the benchmark's database emptied and
    migrated afresh for each round."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    row, _ = row_c(sink, n, pg_url, 2)
    return row, None


def summary(r: dict[str, Any]) -> str:
    parts = [
        f"(a) {r['a']:.0f}",
        f"(t) {r['t']:.0f}",
        f"(b) {r['b']:.0f}",
        f"(b) unpipelined {r['b_unpipelined']:.0f}",
        f"(b) beside a paused configuration {r['b_beside_paused']:.0f}",
        f"(b) beside a tarpit {r['b_beside_tarpit']:.0f}",
    ]
    for key in ("c_default", "c_2_workers", "c_smtp", "c_postgres", "postfix"):
        if key in r:
            cpu = r[key]["cpu_ms_per_msg"]
            main_cpu = cpu.get("mailgate", cpu.get("postfix"))
            parts.append(f"{key} {r[key]['per_s']:.0f} msg/s ({main_cpu:.2f} ms CPU/msg)")
    return ", ".join(parts)


def report(results: dict[str, Any], rounds: list[dict[str, Any]], n: int) -> None:
    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    def med(key: str) -> float:
        return median([r[key]["per_s"] if isinstance(r[key], dict) else r[key] for r in rounds])

    keys = ["a", "t", "b", "b_unpipelined", "b_beside_paused", "b_beside_tarpit"]
    keys += ["c_default", "c_2_workers", "c_smtp", "postfix"]
    if "c_postgres" in rounds[0]:
        keys.append("c_postgres")
    medians = {k: med(k) for k in keys}
    ratios = {
        "t/a": "t",
        "b/a": "b",
        # What the outbox's bookkeeping leaves of the transport's rate.
        "b/t": ("b", "t"),
        "b_unpipelined/a": "b_unpipelined",
        "c_default/a": "c_default",
        "c_2_workers/a": "c_2_workers",
        "postfix/a": "postfix",
        "c_default/postfix": ("c_default", "postfix"),
        "c_2_workers/postfix": ("c_2_workers", "postfix"),
        "c_smtp/c_default": ("c_smtp", "c_default"),
        "c_smtp/postfix": ("c_smtp", "postfix"),
        # (f) fairness: the healthy configuration's rate beside a stuck one, as a share of (b).
        "b_beside_paused/b": ("b_beside_paused", "b"),
        "b_beside_tarpit/b": ("b_beside_tarpit", "b"),
    }
    if "c_postgres" in medians:
        ratios["c_postgres/a"] = "c_postgres"
        ratios["c_postgres/postfix"] = ("c_postgres", "postfix")

    def ratio(r: dict[str, Any], spec: str | tuple[str, str]) -> float:
        top, bottom = (spec, "a") if isinstance(spec, str) else spec
        value = lambda k: r[k]["per_s"] if isinstance(r[k], dict) else r[k]  # noqa: E731
        return float(value(top) / value(bottom))

    per_round = [{name: round(ratio(r, spec), 3) for name, spec in ratios.items()} for r in rounds]
    results["medians_per_s"] = medians
    results["ratios_of_medians"] = {
        name: round(
            medians[spec] / medians["a"]
            if isinstance(spec, str)
            else medians[spec[0]] / medians[spec[1]],
            3,
        )
        for name, spec in ratios.items()
    }
    results["ratios_per_round"] = per_round
    cpu = {
        k: median(
            [
                r[k]["cpu_ms_per_msg"].get("mailgate", r[k]["cpu_ms_per_msg"].get("postfix"))
                for r in rounds
            ]
        )
        for k in keys
        if k not in ("a", "t", "b", "b_unpipelined", "b_beside_paused", "b_beside_tarpit")
    }
    results["cpu_ms_per_msg_medians"] = cpu
    print(f"\nmedians of {len(rounds)} rounds, {n} messages each:")
    for k in keys:
        extra = f"   {cpu[k]:.2f} ms CPU/msg (all its processes)" if k in cpu else ""
        print(f"  {k:12s} {medians[k]:8.0f} msg/s{extra}")
    print("ratios of the medians: " + json.dumps(results["ratios_of_medians"]))
    print(f"per round: {per_round}")
    if "d_latency_ms" in results:
        d = results["d_latency_ms"]
        print(
            f"(d) idle latency, default layout: request->sink p50 {d['from_request_p50']:.1f} "
            f"ms, p99 {d['from_request_p99']:.1f} ms; 202->sink p50 {d['from_202_p50']:.1f} "
            f"ms, p99 {d['from_202_p99']:.1f} ms; measured from before httpx builds the request "
            f"(as before) p50 {d['httpx_from_request_p50']:.1f} ms, "
            f"p99 {d['httpx_from_request_p99']:.1f} ms"
        )


if __name__ == "__main__":
    main()
