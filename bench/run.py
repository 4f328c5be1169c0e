"""mailgate delivery benchmark (issue 4). One run, one machine, one sink for every row.

    .venv/bin/python bench/run.py [--n 5000] [--rss-n 100000] [--database-url URL]

(a) raw aiosmtplib, 8 reused connections: the ceiling of the client library;
(b) mailgate's worker draining N pre-queued messages;
(c) end to end: N messages submitted through the HTTP API by a concurrent client while the
    worker of the same ``mailgate serve`` process delivers them;
(d) idle-queue latency from the request (and from the 202) to the sink receiving the message;
(e) peak RSS of the ``mailgate serve`` process with RSS_N messages queued.

All messages are about 10 KB. Results are printed and written to bench/results.json.
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
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import uvloop
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sink import Sink

from mailgate.adapters.db.tables import Message, MessageContent, Tenant
from mailgate.adapters.secrets import generate_key
from mailgate.bootstrap import Container, build, first_start
from mailgate.config import Settings
from mailgate.domain.messages import new_message_id
from mailgate.entrypoints.worker import Worker
from mailgate.schemas.email_server import EmailServerIn
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


async def raw_client(port: int, n: int) -> float:
    messages = [raw_message(i) for i in range(n)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for m in messages:
        queue.put_nowait(m)

    async def conn() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        while not queue.empty():
            m = queue.get_nowait()
            await smtp.sendmail("bench@example.com", ["sink@example.com"], m)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


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


def prequeue(c: Container, port: int, n: int, server_exists: bool = False) -> None:
    """Queue ``n`` messages: the first through the outbox service, the rest as copies of its
    rows (a bulk insert; building them is not what (b) measures)."""
    with c.session() as db:
        tenant = db.scalar(select(Tenant).where(Tenant.name == "home"))
        assert tenant is not None
        if not server_exists:
            c.servers.create(db, tenant, EmailServerIn.model_validate(server_config(port)))
        body = MessageIn.model_validate(
            {"server": "SINK", "to": ["sink@example.com"], "subject": "b", "text": BODY}
        )
        first = c.outbox.submitter.submit(
            db, tenant.id, Owner("bench", None), body, SubmitOptions.of(body)
        ).message
        content = db.get(MessageContent, first.id)
        assert content is not None
        template = {col.key: getattr(first, col.key) for col in Message.__table__.columns}
        for start in range(1, n, 5000):
            rows, contents = [], []
            for _ in range(start, min(n, start + 5000)):
                mid = new_message_id()
                rows.append({**template, "id": mid})
                contents.append({"message_id": mid, "raw": content.raw})
            db.execute(insert(Message), rows)
            db.execute(insert(MessageContent), contents)
            db.flush()


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


class Serve:
    """``mailgate serve``; with ``split`` its workers run in a separate ``mailgate worker``
    process (``MAILGATE_WORKERS=0`` for the API process), the other way to run it."""

    def __init__(
        self, data_dir: Path, secret_key: str, database_url: str | None, split: bool = False
    ) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "MAILGATE_DATA_DIR": str(data_dir),
            "MAILGATE_SECRET_KEY": secret_key,
            "MAILGATE_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MAILGATE_WORKERS": "0" if split else os.environ.get("MAILGATE_WORKERS", "1"),
            "MAILGATE_LOG_LEVEL": "WARNING",
        }
        if database_url:
            env["MAILGATE_DATABASE_URL"] = database_url
        self.log = (data_dir / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate.entrypoints.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.worker: subprocess.Popen[bytes] | None = None
        if split:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "mailgate.entrypoints.cli", "worker", "--stats-every", "0"],
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

    def pids(self) -> dict[str, int]:
        out = {"serve": self.proc.pid}
        if self.worker is not None:
            out["worker"] = self.worker.pid
        return out

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        for proc in (self.worker, self.proc):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


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


def end_to_end(serve: Serve, sink: Sink, n: int) -> dict[str, Any]:
    """Row (c): from the first request until the sink has all ``n``; CPU per message of
    every process involved."""
    assert sink.proc.pid is not None
    procs = {**serve.pids(), "sink": sink.proc.pid}
    before = {name: cpu_s(pid) for name, pid in procs.items()}
    started = time.perf_counter()
    submitted = submit_all(serve, n)
    sink.wait_for(n)
    elapsed = time.perf_counter() - started
    cpu = {name: (cpu_s(pid) - before[name]) * 1000 / n for name, pid in procs.items()}
    cpu["client"] = submitted["client_cpu_s"] * 1000 / n
    return {
        "per_s": n / elapsed,
        "submit_per_s": n / submitted["seconds"],
        "errors": submitted["errors"],
        "first_error": submitted.get("first_error"),
        "cpu_ms_per_msg": {k: round(v, 3) for k, v in cpu.items()},
    }


def idle_latency(serve: Serve, sink: Sink, samples: int) -> tuple[list[float], list[float]]:
    url = f"{serve.url}/api/v1/tenants/home/messages"
    from_request, from_202 = [], []
    headers = {"Authorization": f"Bearer {serve.api_key}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for i in range(samples):
            bench_id = f"lat-{i}"
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
            deadline = time.monotonic() + 30
            while True:
                arrived = sink.arrivals().get(bench_id)
                if arrived is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(bench_id)
                time.sleep(0.001)
            from_request.append((arrived - t_request) * 1000)
            from_202.append((arrived - t_202) * 1000)
            time.sleep(0.05)  # the queue is idle again before the next one
    return from_request, from_202


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def row_a(sink: Sink, n: int) -> float:
    sink.reset()
    elapsed = run_loop(raw_client(sink.port, n))
    sink.wait_for(n)
    return n / elapsed


def row_b(sink: Sink, n: int, database_url: str | None) -> float:
    sink.reset()
    with tempfile.TemporaryDirectory() as tmp:
        c = container(Path(tmp), database_url)
        prequeue(c, sink.port, n)
        elapsed = run_loop(drain(c, sink, n))
        c.engine.dispose()
    return n / elapsed


def row_c(
    sink: Sink, n: int, database_url: str | None, split: bool, samples: int = 0
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(c) in one layout; with ``samples`` also (d) on the same installation."""
    sink.reset()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        c = container(data, database_url)
        secret = c.settings.secret_key or ""
        c.engine.dispose()
        serve = Serve(data, secret, database_url, split=split)
        try:
            serve.create_server_and_key(sink.port)
            row = end_to_end(serve, sink, n)
            latency = None
            if samples:
                sink.reset()
                lat_req, lat_202 = idle_latency(serve, sink, samples)
                latency = {
                    "from_request_p50": pct(lat_req, 50),
                    "from_request_p99": pct(lat_req, 99),
                    "from_202_p50": pct(lat_202, 50),
                    "from_202_p99": pct(lat_202, 99),
                    "samples": len(lat_req),
                }
        finally:
            serve.stop()
    return row, latency


def row_e(sink: Sink, rss_n: int, database_url: str | None) -> dict[str, Any]:
    """(e) an installation with ``rss_n`` messages waiting, started (one serve process)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        c = container(data, database_url)
        secret = c.settings.secret_key or ""
        t = time.perf_counter()
        prequeue(c, sink.port, rss_n)
        c.engine.dispose()
        print(f"    queued {rss_n} messages in {time.perf_counter() - t:.0f} s", flush=True)
        sink.reset()
        serve = Serve(data, secret, database_url)
        try:
            health = httpx.get(serve.url + "/healthz").json()
            time.sleep(20)  # delivering from the backlog
            for _ in range(5):
                httpx.get(
                    f"{serve.url}/api/v1/tenants/home/messages?limit=100", headers=serve.headers
                )
                httpx.get(serve.url + "/metrics")
            rss = serve.peak_rss_mb()
            delivered = sink.count
        finally:
            serve.stop()
    return {"peak_rss_mb": rss, "queue_at_start": health["queue"], "delivered_in_20s": delivered}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rss-n", type=int, default=100_000)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of (a), (b), (c); each row's median is reported (the machine's speed "
        "drifts between rounds, so the rows of one round are measured back to back)",
    )
    ap.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = ap.parse_args()
    n = args.n
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu, "
        f"load {os.getloadavg()[0]:.1f} at start",
        "python": sys.version.split()[0],
        "n": n,
        "rounds": args.repeat,
        "database": args.database_url.split("@")[-1] if args.database_url else "sqlite",
    }
    rounds: list[dict[str, Any]] = []
    sink = Sink()
    try:
        print(f"sink on port {sink.port}; {n} messages of {len(raw_message(0))} bytes", flush=True)
        for i in range(args.repeat):
            r: dict[str, Any] = {"load": round(os.getloadavg()[0], 2)}
            r["a"] = row_a(sink, n)
            r["b"] = row_b(sink, n, args.database_url)
            r["c_one_process"], _ = row_c(sink, n, args.database_url, split=False)
            samples = args.latency_samples if i == args.repeat - 1 else 0
            r["c_split"], latency = row_c(sink, n, args.database_url, split=True, samples=samples)
            if latency is not None:
                results["d_latency_ms"] = latency
            rounds.append(r)
            print(
                f"round {i + 1}: (a) {r['a']:.0f}  (b) {r['b']:.0f}  "
                f"(c) one process {r['c_one_process']['per_s']:.0f}, "
                f"serve + worker {r['c_split']['per_s']:.0f} msg/s; CPU ms/message "
                f"one process {r['c_one_process']['cpu_ms_per_msg']}, "
                f"serve + worker {r['c_split']['cpu_ms_per_msg']}",
                flush=True,
            )
        results["rounds_detail"] = rounds
        results["e"] = row_e(sink, args.rss_n, args.database_url)
    finally:
        sink.stop()

    def median(values: list[float]) -> float:
        return float(statistics.median(values))

    a = median([r["a"] for r in rounds])
    b = median([r["b"] for r in rounds])
    c1 = median([r["c_one_process"]["per_s"] for r in rounds])
    c2 = median([r["c_split"]["per_s"] for r in rounds])
    results.update(
        {
            "a_raw_aiosmtplib_per_s": a,
            "b_worker_drain_per_s": b,
            "c_one_process_per_s": c1,
            "c_split_per_s": c2,
            "ratio_b_a": b / a,
            "ratio_c_one_process_a": c1 / a,
            "ratio_c_split_a": c2 / a,
            "ratios_per_round": [
                {
                    "b/a": round(r["b"] / r["a"], 3),
                    "c_one_process/a": round(r["c_one_process"]["per_s"] / r["a"], 3),
                    "c_split/a": round(r["c_split"]["per_s"] / r["a"], 3),
                }
                for r in rounds
            ],
        }
    )
    d, e = results["d_latency_ms"], results["e"]
    print(f"\nmedians of {len(rounds)} rounds:")
    print(f"(a) raw aiosmtplib, {CONNECTIONS} connections: {a:8.0f} msg/s")
    print(f"(b) worker draining {n} queued:       {b:8.0f} msg/s")
    print(f"(c) end to end, one serve process:      {c1:8.0f} msg/s")
    print(f"(c) end to end, serve + worker process: {c2:8.0f} msg/s")
    print(
        f"(d) idle latency, request->sink p50 {d['from_request_p50']:.1f} ms, "
        f"p99 {d['from_request_p99']:.1f} ms; 202->sink p50 {d['from_202_p50']:.1f} ms, "
        f"p99 {d['from_202_p99']:.1f} ms (serve + worker process)"
    )
    print(
        f"(e) peak RSS with {args.rss_n} queued: {e['peak_rss_mb']:.0f} MB "
        f"(delivered {e['delivered_in_20s']} in the 20 s measured)"
    )
    print(f"\n(b)/(a) = {b / a:.2f}   (target >= 0.8)")
    print(
        f"(c)/(a) = {c1 / a:.2f} one serve process, {c2 / a:.2f} serve + worker processes"
        "   (target >= 0.5)"
    )
    print(f"per round: {results['ratios_per_round']}")
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
