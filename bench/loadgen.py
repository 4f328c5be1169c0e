"""A lean HTTP/1.1 load generator: keep-alive connections, pre-built requests, no client
library, so that the benchmark's client costs little CPU next to the server it measures
(an httpx client spent more CPU per request than the server it drove).

    python bench/loadgen.py URL TOKEN N CONCURRENCY BODY_FILE  -> prints JSON

Run in its own process. Every response must be ``202``; the first other status and its
body are reported.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def _one_connection(
    host: str, port: int, request: bytes, todo: list[int], out: dict[str, object]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while todo:
            todo.pop()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if status == 202:
                out["accepted"] = int(out["accepted"]) + 1  # type: ignore[call-overload]
            else:
                out["errors"] = int(out["errors"]) + 1  # type: ignore[call-overload]
                out.setdefault("first_error", f"{status} {body[:300]!r}")
    finally:
        writer.close()


async def run(url: str, token: str, n: int, concurrency: int, body: bytes) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    todo = list(range(n))
    out: dict[str, object] = {"accepted": 0, "errors": 0}
    started = time.perf_counter()
    await asyncio.gather(
        *(_one_connection(host, port, request, todo, out) for _ in range(concurrency))
    )
    out["seconds"] = time.perf_counter() - started
    out["client_cpu_s"] = time.process_time()
    return out


def main() -> None:
    url, token, n, concurrency, body_file = sys.argv[1:6]
    with open(body_file, "rb") as f:
        body = f.read()
    print(json.dumps(asyncio.run(run(url, token, int(n), int(concurrency), body))))


if __name__ == "__main__":
    main()
