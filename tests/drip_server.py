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
