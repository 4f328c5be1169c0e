"""The worker supervisor of ``mailgate serve`` (entrypoints/supervisor.py) with real, short
lived processes: a crash loop is restarted with a growing delay (on the test clock, so the
test does not wait it out), output is relayed with a prefix, a process that ran long
enough restarts after the shortest delay again, and stop() ends what is left.
The whole service with real workers is in tests/e2e/test_serve_workers.py."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.clock import TestClock

from mailgate.config import Settings, auto_worker_processes, usable_cpus
from mailgate.entrypoints import supervisor as sup
from mailgate.entrypoints.supervisor import WorkerSupervisor, describe_exit


class Output(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            return super().write(s)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()


def wait_for(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_a_crash_loop_backs_off_and_output_is_prefixed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    script = (
        "import os, sys, pathlib; "
        f"pathlib.Path({str(runs)!r}, str(os.getpid())).touch(); "
        "print('hello from a worker'); print('bye', file=sys.stderr); sys.exit(3)"
    )
    clock = TestClock()
    out = Output()
    s = WorkerSupervisor(
        1,
        command=lambda: [sys.executable, "-c", script],
        out=out,
        clock=lambda: (clock() - clock.start).total_seconds(),
    )

    def spawned() -> int:
        return len(list(runs.iterdir()))

    s.start()
    try:
        wait_for(lambda: spawned() == 1 and s.slots[0].restart_at is not None)
        assert s.slots[0].restart_at == 1.0  # first restart after 1 s
        time.sleep(0.3)
        assert spawned() == 1  # the clock stands still: no restart
        clock.advance(seconds=1)
        wait_for(lambda: spawned() == 2 and s.slots[0].restart_at is not None)
        assert s.slots[0].restart_at == 1.0 + 2.0  # then 2 s later
        clock.advance(seconds=2)
        wait_for(lambda: spawned() == 3 and s.slots[0].restart_at is not None)
        assert s.slots[0].restart_at == 3.0 + 4.0  # then 4 s: a crash loop does not spin
        clock.advance(seconds=4)
        wait_for(lambda: spawned() == 4 and s.slots[0].proc is None)
        assert s.slots[0].exit_codes == [3, 3, 3, 3]
    finally:
        s.stop(grace_s=5)
    wait_for(lambda: out.text().count("worker-1 | hello from a worker") == 4)
    assert out.text().count("worker-1 | bye") == 4


def test_a_stable_worker_restarts_after_the_shortest_delay(tmp_path: Path) -> None:
    clock = TestClock()
    s = WorkerSupervisor(
        1,
        command=lambda: [sys.executable, "-c", "import time; time.sleep(60)"],
        out=Output(),
        clock=lambda: (clock() - clock.start).total_seconds(),
    )
    s.start()
    try:
        wait_for(lambda: bool(s.pids))
        s.slots[0].delay_s = 32.0  # as after several quick crashes
        clock.advance(seconds=sup.STABLE_S + 1)
        (pid,) = s.pids
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: s.slots[0].restart_at is not None)
        assert s.slots[0].restart_at == sup.STABLE_S + 1 + sup.RESTART_MIN_S
        assert s.slots[0].exit_codes == [-9]
    finally:
        codes = s.stop(grace_s=5)
    assert codes == {1: -9}


def test_stop_ends_a_worker_that_ignores_sigterm() -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    out = Output()
    s = WorkerSupervisor(2, command=lambda: [sys.executable, "-c", script], out=out)
    s.start()
    wait_for(lambda: out.text().count("| ready") == 2)
    started = time.monotonic()
    codes = s.stop(grace_s=0.5)
    assert time.monotonic() - started < 10
    assert codes == {1: -9, 2: -9}
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(0) == "exit status 0"


def test_workers_setting() -> None:
    assert [auto_worker_processes(n) for n in (1, 2, 3, 4, 8, 64)] == [1, 1, 2, 3, 4, 4]
    assert [auto_worker_processes(n, sqlite=True) for n in (1, 2, 8)] == [1, 1, 1]
    assert Settings(workers="auto", _env_file=None).worker_processes == 1  # type: ignore[call-arg]
    on_pg = Settings(  # type: ignore[call-arg]
        workers="auto", database_url="postgresql+psycopg://u@h/db", _env_file=None
    )
    assert on_pg.worker_processes == auto_worker_processes(usable_cpus())
    assert Settings(workers="0", _env_file=None).worker_processes == 0  # type: ignore[call-arg, arg-type]
    assert Settings(workers=3, _env_file=None).worker_processes == 3  # type: ignore[call-arg]
    for bad in ("x", -1, 65, "1.5"):
        with pytest.raises(ValidationError):
            Settings(workers=bad, _env_file=None)  # type: ignore[call-arg, arg-type]
