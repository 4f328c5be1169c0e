"""What a 202 guarantees on SQLite (README "What a 202 guarantees"): the submissions'
commits run with synchronous=FULL (an fsync of the WAL per group commit), every other
transaction with NORMAL; MAILGATE_SQLITE_SYNCHRONOUS=normal trades that for speed. A power
loss itself cannot be staged here; this checks the setting in force at commit time."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from tests.conftest import make_settings

from mailgate.bootstrap import build

_FULL, _NORMAL = 2, 1


def _synchronous(engine: Engine) -> int:
    with engine.begin() as conn:
        value = conn.execute(text("PRAGMA synchronous")).scalar_one()
        return int(value)


def test_submissions_commit_with_full_and_the_rest_with_normal(
    tmp_path: Path, sqlite_url: str
) -> None:
    c = build(make_settings(tmp_path, sqlite_url))
    try:
        assert c.settings.sqlite_synchronous == "full"
        assert _synchronous(c.submissions.engine) == _FULL
        # The same pooled connection goes back to NORMAL for other work.
        assert _synchronous(c.engine) == _NORMAL
        assert _synchronous(c.submissions.engine) == _FULL
        with c.session(durable=True) as db:  # submissions with an idempotency key
            assert int(db.execute(text("PRAGMA synchronous")).scalar_one()) == _FULL
        # The fsync must not stop the event loop: the group commit writes in its thread.
        assert not c.submissions.on_loop
    finally:
        c.engine.dispose()


def test_normal_is_the_operators_choice(tmp_path: Path, sqlite_url: str) -> None:
    c = build(make_settings(tmp_path, sqlite_url, sqlite_synchronous="normal"))
    try:
        assert _synchronous(c.submissions.engine) == _NORMAL
        assert c.submissions.on_loop
    finally:
        c.engine.dispose()
