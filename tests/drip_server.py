"""An HTTP endpoint that answers one byte at a time, forever (a slow-loris server): what a
tenant's hostile or broken token endpoint does to a client with per-read timeouts only.

``DripServer`` runs on a thread at ``127.0.0.1:<port>``. Each connection gets a status line
and headers that promise a JSON body, then one byte every ``interval_s`` until ``max_s``.
"""

from __future__ import annotations

import socket
import threading
import time


class DripServer:
    def __init__(self, *, interval_s: float = 0.2, max_s: float = 20.0) -> None:
        self.interval_s = interval_s
        self.max_s = max_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="drip", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DripServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self.listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn:
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                self.requests.append(data)
                self.connected.set()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n"
                )
                ends = time.monotonic() + self.max_s
                while not self._stop.is_set() and time.monotonic() < ends:
                    conn.sendall(b" ")
                    time.sleep(self.interval_s)
            except OSError:
                return


class JsonEndpoint:
    """An HTTP endpoint on a thread that answers every POST with ``answer`` (JSON text, as
    given: it may be what a hostile token endpoint sends) and counts the requests."""

    def __init__(self, answer: str, status: int = 200) -> None:
        self.answer = answer.encode()
        self.status = status
        self.requests = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, name="json-endpoint", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    while len(body) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        body += chunk
                    self.requests += 1
                    conn.sendall(
                        f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(self.answer)}\r\nConnection: close\r\n\r\n".encode()
                        + self.answer
                    )
                except OSError:
                    continue
