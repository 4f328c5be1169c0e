"""Reliability benchmark (issue 14): what a crash costs, and what a durable 202 costs.

    .venv/bin/python bench/crash.py [--n 2000] [--crashes 3] [--lease-s 30]

crash: N messages (10 KB) queued for the sink (8 connections); two ``mailgate worker``
    processes deliver them; one is killed with SIGKILL once a quarter has arrived. Measured:
    repeats (what the sink received beyond N), messages flagged possibly delivered in their
    attempt log, and the recovery time: from the kill until no message is held by the dead
    worker any more (taken over by the other's heartbeat, or after the lease). Variants:
    ``takeover`` (the default MAILGATE_WORKER_DEAD_AFTER_S=15) and ``lease only`` (takeover
    off: MAILGATE_WORKER_DEAD_AFTER_S very large - what recovery cost before heartbeats).
    MAILGATE_POSSIBLY_DELIVERED_RETRY_S=1 so that flagged messages are repeated within the run.
durability: submissions per second through ``mailgate serve`` (API only, SQLite) over 16
    keep-alive connections with MAILGATE_SQLITE_SYNCHRONOUS=full (the default: an fsync per
    group commit) and =normal.

Results are printed and written to bench/crash_results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Serve, container, prequeue, submit_all
from sink import Sink

from mailgate.adapters.db.tables import Message, MessageAttempt

HERE = Path(__file__).resolve().parent


def start_worker(data: Path, url: str, secret: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
    full.update(
        {
            "MAILGATE_DATA_DIR": str(data),
            "MAILGATE_DATABASE_URL": url,
            "MAILGATE_SECRET_KEY": secret,
            "MAILGATE_LOG_LEVEL": "WARNING",
            "MAILGATE_POSSIBLY_DELIVERED_RETRY_S": "1",
            **env,
        }
    )
    log = (data / f"worker-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "mailgate.entrypoints.cli", "worker", "--stats-every", "0"],
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def one_crash(sink: Sink, n: int, lease_s: int, takeover: bool) -> dict[str, Any]:
    sink.reset()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        c = container(data, None)
        url = c.settings.effective_database_url
        secret = c.settings.secret_key or ""
        prequeue(c, sink.port, n)
        c.engine.dispose()
        env = {"MAILGATE_LEASE_S": str(lease_s)}
        if not takeover:
            env["MAILGATE_WORKER_DEAD_AFTER_S"] = "1000000"
        a = start_worker(data, url, secret, env)
        b = start_worker(data, url, secret, env)
        engine = create_engine(url)
        try:
            deadline = time.monotonic() + 300
            while sink.count < n // 4:
                if time.monotonic() > deadline:
                    raise RuntimeError("the workers did not deliver")
                time.sleep(0.02)
            a.kill()
            a.wait()
            killed = time.monotonic()
            dead_id = f"{socket.gethostname()}:{a.pid}:0"
            with engine.connect() as conn:
                held_at_kill = conn.scalar(select(func.count()).where(Message.locked_by == dead_id))
            recovered = None
            while True:
                now = time.monotonic()
                with engine.connect() as conn:
                    held = conn.scalar(select(func.count()).where(Message.locked_by == dead_id))
                    sent = conn.scalar(select(func.count()).where(Message.status == "sent"))
                if recovered is None and not held:
                    recovered = now - killed
                if sent == n and recovered is not None:
                    break
                if now - killed > lease_s + 240:
                    raise RuntimeError("the messages were not all sent")
                time.sleep(0.1)
            done_s = time.monotonic() - killed
            time.sleep(0.5)  # repeats in flight reach the sink
            with engine.connect() as conn:
                flagged = conn.scalar(
                    select(func.count(func.distinct(MessageAttempt.message_id))).where(
                        MessageAttempt.possibly_delivered
                    )
                )
        finally:
            for p in (a, b):
                if p.poll() is None:
                    p.terminate()
                    p.wait(30)
            engine.dispose()
        return {
            "takeover": takeover,
            "held_by_dead_worker_at_kill": held_at_kill,
            "repeats": sink.count - n,
            "flagged_possibly_delivered": flagged,
            "recovery_s": round(recovered or 0.0, 2),
            "all_sent_after_kill_s": round(done_s, 2),
        }


def durability(sink: Sink, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for mode in ("full", "normal"):
        sink.reset()
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            c = container(data, None)
            secret = c.settings.secret_key or ""
            c.engine.dispose()
            serve = Serve(data, secret, None, 0, extra_env={"MAILGATE_SQLITE_SYNCHRONOUS": mode})
            try:
                serve.create_server_and_key(sink.port)
                started = time.perf_counter()
                result = submit_all(serve, n)
                elapsed = time.perf_counter() - started
                assert result["accepted"] == n, result
            finally:
                serve.stop()
        out[mode] = round(n / elapsed, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--lease-s", type=int, default=30)
    args = parser.parse_args()
    load_before = os.getloadavg()
    sink = Sink()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "n": args.n,
        "lease_s": args.lease_s,
    }
    crashes = [one_crash(sink, args.n, args.lease_s, True) for _ in range(args.crashes)]
    for row in crashes:
        print("crash (takeover):", row, flush=True)
    lease_only = one_crash(sink, args.n, args.lease_s, False)
    print("crash (lease only):", lease_only, flush=True)
    submissions = durability(sink, args.n)
    print("submissions/s by MAILGATE_SQLITE_SYNCHRONOUS:", submissions, flush=True)
    results.update(
        crashes=crashes,
        lease_only=lease_only,
        submissions_per_s=submissions,
        load_after=[round(x, 2) for x in os.getloadavg()],
    )
    (HERE / "crash_results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
