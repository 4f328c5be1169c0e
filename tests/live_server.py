"""Run an ASGI app under uvicorn on 127.0.0.1 with an ephemeral port, in a thread.

For tests that need a real HTTP/WebSocket server (the remote agent connects over the network),
optionally with TLS from a ``trustme`` certificate.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn


@contextmanager
def live_server(
    app: Any, certfile: Path | None = None, keyfile: Path | None = None
) -> Iterator[str]:
    """Yields the base URL (``http://127.0.0.1:PORT`` or ``https://localhost:PORT``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"https://localhost:{port}" if certfile else f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def serve_process(
    args: list[str], env: dict[str, str], cwd: Path, stop_timeout_s: float = 15
) -> Iterator[tuple[str, list[str], subprocess.Popen[str]]]:
    """A real ``mailgate serve ARGS`` process: yields its URL (read from uvicorn's start
    line), its output so far (kept growing by a thread: a pipe nobody reads fills up and
    blocks the server) and the process; SIGTERM at the end, SIGKILL if it does not stop."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailgate.entrypoints.cli", "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    stdout = proc.stdout
    log: list[str] = []
    url = None
    for line in stdout:
        log.append(line)
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        raise AssertionError("mailgate serve did not start:\n" + "".join(log))

    def drain() -> None:
        for line in stdout:
            log.append(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        yield url, log, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
