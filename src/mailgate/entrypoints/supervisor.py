"""The delivery worker processes of ``mailgate serve``: started, watched, restarted, stopped.

``mailgate serve`` answers the API in its own process and delivers in ``MAILGATE_WORKERS``
processes beside it (``mailgate worker --supervised``), so that delivery gets cores of its
own instead of sharing one interpreter lock with the API. Each worker process:

- writes its output to a pipe that this supervisor copies, line by line, to the serve
  process's standard error with a ``worker-N |`` prefix: one stream for the whole service;
- has its standard input on a pipe this process holds: if ``mailgate serve`` dies, even by
  SIGKILL, the pipe ends and the worker stops gracefully (nothing orphaned keeps sending);
- runs in its own session, so a Ctrl-C in the terminal reaches ``mailgate serve`` only, which
  then stops the workers in order;
- is restarted when it exits while serve runs: after 1 s, doubling for every crash of a
  process that ran less than ``STABLE_S``, at most ``RESTART_MAX_S`` apart, so a crash loop
  (a broken database URL, a bad deployment) is logged, not spun;
- on shutdown gets SIGTERM (it stops claiming, finishes the messages it is sending and gives
  back the rest) and ``STOP_GRACE_S`` to exit; then SIGKILL. Messages it still held are taken
  over by another worker when their lease ends (README "Sending mail", Workers).

A worker that dies loses nothing: its claimed messages carry a lease in the database.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger("mailgate.supervisor")

RESTART_MIN_S = 1.0
RESTART_MAX_S = 60.0
STABLE_S = 30.0
"""A worker process that ran this long before it exited restarts after ``RESTART_MIN_S``."""
STOP_GRACE_S = 30.0
WATCH_EVERY_S = 0.1


def worker_command() -> list[str]:
    """A supervised ``mailgate worker`` with this interpreter (the same installation)."""
    return [
        sys.executable,
        "-m",
        "mailgate.entrypoints.cli",
        "worker",
        "--supervised",
        "--stats-every",
        "0",
    ]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@dataclass
class _Slot:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay_s: float = RESTART_MIN_S
    restart_at: float | None = None
    relays: list[threading.Thread] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)


class WorkerSupervisor:
    """``count`` worker processes, kept running until ``stop()``."""

    def __init__(
        self,
        count: int,
        *,
        env: dict[str, str] | None = None,
        command: Callable[[], list[str]] = worker_command,
        out: IO[str] | None = None,
        stopping: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = [_Slot(n) for n in range(1, count + 1)]
        self.env = env
        self.command = command
        self.out = out if out is not None else sys.stderr
        self.stopping = stopping
        """Polled by the watcher: true once the service is shutting down (uvicorn's
        ``should_exit``), so the workers start their drain while the API finishes its own."""
        self.clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._out_lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for slot in self.slots:
                self._spawn(slot)
        if self.slots:
            log.info("started %d delivery worker process(es)", len(self.slots))
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._watcher.start()

    def request_stop(self) -> None:
        """SIGTERM to every worker process (no waiting); none is restarted after this."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            for slot in self.slots:
                slot.restart_at = None
                if slot.proc is not None and slot.proc.poll() is None:
                    slot.proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S) -> dict[int, int]:
        """Stop every worker process: SIGTERM, up to ``grace_s`` to drain, then SIGKILL.
        Returns the last exit status of each (by worker number)."""
        self.request_stop()
        if self._watcher is not None:
            self._watcher.join(5)
        deadline = self.clock() + grace_s
        for slot in self.slots:
            if slot.proc is None:
                continue
            try:
                slot.proc.wait(max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker-%d did not stop within %.0f s: SIGKILL (its messages are "
                    "retried when their lease ends)",
                    slot.number,
                    grace_s,
                )
                slot.proc.kill()
                slot.proc.wait()
        codes = {}
        for slot in self.slots:
            if slot.proc is not None:
                code = self._reap(slot)
                log.info("worker-%d stopped (%s)", slot.number, describe_exit(code))
            if slot.exit_codes:
                codes[slot.number] = slot.exit_codes[-1]
            for relay in slot.relays:
                relay.join(5)
        return codes

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    # ---- the watcher ----------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            if self.stopping():
                self.request_stop()
                return
            with self._lock:
                if self._stop.is_set():
                    return
                now = self.clock()
                for slot in self.slots:
                    if slot.proc is not None and slot.proc.poll() is not None:
                        self._died(slot, now)
                    if slot.restart_at is not None and now >= slot.restart_at:
                        slot.restart_at = None
                        self._spawn(slot)

    def _died(self, slot: _Slot, now: float) -> None:
        assert slot.proc is not None
        code = self._reap(slot)
        lived = now - slot.started_at
        if lived >= STABLE_S:
            slot.delay_s = RESTART_MIN_S
        log.warning(
            "worker-%d (pid %d) ended after %.0f s (%s); restarting in %.0f s",
            slot.number,
            slot.proc.pid,
            lived,
            describe_exit(code),
            slot.delay_s,
        )
        slot.restart_at = now + slot.delay_s
        slot.delay_s = min(slot.delay_s * 2, RESTART_MAX_S)
        slot.proc = None

    def _reap(self, slot: _Slot) -> int:
        assert slot.proc is not None
        code = slot.proc.wait()
        if slot.proc.stdin is not None:
            slot.proc.stdin.close()
        slot.exit_codes.append(code)
        return code

    def _spawn(self, slot: _Slot) -> None:
        env = dict(self.env if self.env is not None else os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the shared stream as they are written
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.command(),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("worker-%d could not be started: %s", slot.number, exc)
            slot.restart_at = self.clock() + slot.delay_s
            slot.delay_s = min(slot.delay_s * 2, RESTART_MAX_S)
            return
        slot.proc = proc
        slot.started_at = self.clock()
        relay = threading.Thread(
            target=self._relay, args=(slot.number, proc), name=f"worker-{slot.number}-log"
        )
        relay.daemon = True
        relay.start()
        slot.relays = [r for r in slot.relays if r.is_alive()] + [relay]

    def _relay(self, number: int, proc: subprocess.Popen[bytes]) -> None:
        """Copy the worker's output, line by line, into the service's stream."""
        assert proc.stdout is not None
        prefix = f"worker-{number} | "
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._out_lock:
                try:
                    self.out.write(prefix + line + "\n")
                    self.out.flush()
                except (OSError, ValueError):
                    pass  # our own stream is gone (closed at exit): nothing to do
        proc.stdout.close()
