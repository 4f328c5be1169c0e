"""Injects N messages over SMTP with aiosmtplib (the client library of row (a)), from
CONCURRENCY connections, each sending message after message; run in its own process.
With USER and PASSWORD each connection signs in first (AUTH PLAIN: mailgate's SMTP
submission, user = tenant, password = API key).

    python bench/smtpgen.py HOST PORT N CONCURRENCY MESSAGE_FILE [USER PASSWORD] -> prints JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiosmtplib
import uvloop


async def run(
    host: str,
    port: int,
    n: int,
    concurrency: int,
    message: bytes,
    login: tuple[str, str] | None = None,
) -> dict[str, object]:
    todo = list(range(n))
    out: dict[str, object] = {"accepted": 0, "errors": 0}

    async def one() -> None:
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=300)
        await smtp.connect()
        if login is not None:
            await smtp.login(*login)
        while todo:
            todo.pop()
            try:
                await smtp.sendmail("bench@example.com", ["sink@example.com"], message)
                out["accepted"] = int(out["accepted"]) + 1  # type: ignore[call-overload]
            except aiosmtplib.SMTPException as exc:
                out["errors"] = int(out["errors"]) + 1  # type: ignore[call-overload]
                out.setdefault("first_error", repr(exc)[:300])
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    out["seconds"] = time.perf_counter() - started
    out["client_cpu_s"] = time.process_time()
    return out


def main() -> None:
    host, port, n, concurrency, message_file = sys.argv[1:6]
    login = (sys.argv[6], sys.argv[7]) if len(sys.argv) > 7 else None
    with open(message_file, "rb") as f:
        message = f.read()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(host, int(port), int(n), int(concurrency), message, login))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
