"""PostgreSQL connections are kept, not opened per request: serve's submissions read in a
pool of threads, and at the benchmark's 16 concurrent requests a pool that kept 10
connections opened and closed 350-400 PostgreSQL connections (a server process each) per
5,000 submissions (bench/README.md)."""

from __future__ import annotations

import threading

from sqlalchemy import event, text

from mailgate.adapters.db.engine import make_engine


def test_sixteen_concurrent_readers_reuse_their_connections(postgres_database: str) -> None:
    engine = make_engine(postgres_database)
    opened = 0

    @event.listens_for(engine, "connect")
    def _count(_dbapi_conn: object, _record: object) -> None:
        nonlocal opened
        opened += 1

    together = threading.Barrier(16)

    def read() -> None:
        with engine.connect() as conn:
            together.wait(timeout=30)  # all 16 hold a connection at once
            conn.execute(text("SELECT 1"))

    try:
        for _round in range(5):
            threads = [threading.Thread(target=read) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        # The first round opens 16; the next four reuse them (a pool that keeps fewer
        # closes the rest as they come back and opens them again: 40 with 10 kept).
        assert opened == 16, opened
    finally:
        engine.dispose()
