"""`make run` installs only what running needs; the test extras are `make test`'s.

It used to install the test extras too (a 460 MB venv to run the service). This builds the
run venv from a copy of the project, serves until /healthz answers, and looks inside.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
FIRST_START_S = 600  # a venv built from the package registries


def _name(requirement: str) -> str:
    for stop in "<>=!~[;( ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower().replace("_", "-")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(FIRST_START_S + 120)
def test_make_run_builds_a_venv_without_the_test_extras(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    work = tmp_path / "mailgate"
    work.mkdir()
    for name in ("Makefile", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, work / name)
    shutil.copytree(
        REPO / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MAILGATE_", "MAKE", "MFLAGS", "VIRTUAL_ENV"))
    }
    env.update(
        MAILGATE_PORT=str(port),
        MAILGATE_ADMIN_PASSWORD="Make-run-check-1",
        MAILGATE_PASSWORD_HASH_TIME_COST="1",
        MAILGATE_PASSWORD_HASH_MEMORY_KIB="64",
    )
    log = tmp_path / "make-run.log"
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=work,
        env=env,
        stdout=log.open("w"),  # a file, not a pipe: pip's output cannot block it
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and mailgate serve, stopped together below
    )
    started = False
    try:
        deadline = time.monotonic() + FIRST_START_S
        while not started and proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                url = f"http://127.0.0.1:{port}/healthz"
                started = httpx.get(url, timeout=2).status_code == 200
            if not started:
                time.sleep(1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert started, "make run did not serve /healthz:\n" + log.read_text()

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    test_only = sorted({_name(r) for r in project["optional-dependencies"]["test"]} - runtime)
    installed = subprocess.run(
        [str(work / ".venv" / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {_name(line) for line in installed.splitlines()}
    assert "mailgate" in names
    assert not [n for n in test_only if n in names], installed

    # A second `make run` installs nothing; `make test` would add the extras to this venv.
    again = subprocess.run(["make", "-n", "run"], cwd=work, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "pip install" not in again.stdout, again.stdout
    test = subprocess.run(
        ["make", "-n", "pytest"], cwd=work, env=env, capture_output=True, text=True
    )
    assert "pip install --quiet -e '.[test]'" in test.stdout, test.stdout
