"""The test suite's own rules: markers select what they say, a test never passes by not
running, one clock, and every document the code cites is in the repository."""

from __future__ import annotations

import ast
import asyncio
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.clock import TestClock

ROOT = Path(__file__).resolve().parents[2]


def collect(*args: str) -> list[str]:
    """The node ids ``pytest --collect-only`` selects."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 5), done.stdout + done.stderr  # 5: nothing selected
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_browser_selects_exactly_the_tests_that_drive_chromium() -> None:
    e2e = ROOT / "tests" / "e2e"
    ui_tests = {
        f"{path.name}::{name}" for path in e2e.glob("test_ui_*.py") for name in functions_of(path)
    }
    assert ui_tests
    selected = collect("-m", "browser", "tests/e2e")
    # All of them, and nothing else (test_delivery.py and the others need no browser).
    assert {Path(node).name.split("[")[0] for node in selected} == ui_tests


def functions_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")
    ]


def test_the_sqlite_only_test_has_no_postgres_variant_that_passes_unrun() -> None:
    nodes = collect("tests/integration/test_group_commit.py")
    wal = [n for n in nodes if "test_the_writer_keeps_sqlites_wal_from_growing" in n]
    assert [n.rsplit("[", 1)[-1] for n in wal] == ["sqlite]"]
    assert any(n.endswith("[postgres]") for n in nodes)  # the others run on both


def test_one_clock_for_all_tests() -> None:
    """Hand-written clocks drift apart; tests/clock.py is the one the suite shares."""
    clocks = []
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name == "clock.py" and path.parent.name == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Clock"):
                clocks.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not clocks, "use tests.clock.TestClock instead of " + ", ".join(clocks)


def test_the_clock_stands_still_until_moved() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    clock = TestClock(start)
    time.sleep(0.01)
    assert clock() == clock.now == start
    clock.advance(minutes=5)
    clock.offset += timedelta(hours=1)
    assert clock() == start + timedelta(hours=1, minutes=5)
    assert TestClock().now.microsecond == 0


def test_a_ticking_clock_runs_with_real_time_plus_the_offset() -> None:
    clock = TestClock(ticking=True)
    clock.advance(days=8)
    before = datetime.now(UTC) + timedelta(days=8)
    first = clock()
    time.sleep(0.01)
    assert before <= first < clock() <= datetime.now(UTC) + timedelta(days=8)


def test_every_document_the_code_cites_is_in_the_repository() -> None:
    """A citation of a document nobody can open explains nothing; nor does one of a README
    section that is not there (``README "Sending mail"`` names the start of a heading)."""
    tracked = subprocess.run(
        ["git", "ls-files", "src", "tests"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    headings = re.findall(r"^#+ (.+)$", (ROOT / "README.md").read_text("utf-8"), re.MULTILINE)
    missing = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".js", ".html", ".css", ".toml", ".ini", ".mako"):
            continue
        text = path.read_text(encoding="utf-8")
        for cited in set(re.findall(r"[\w./-]+\.md\b", text)):
            if not any((base / cited).exists() for base in (ROOT, path.parent)):
                missing.append(f"{name}: {cited}")
        for section in re.findall(r"README \x22([^\x22]+)\x22", re.sub(r"\s+", " ", text)):
            if not any(h.startswith(section) for h in headings):
                missing.append(f"{name}: README section {section!r}")
    assert not missing


def test_sleeping_on_the_clock_moves_it_without_waiting() -> None:
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    clock = TestClock(start)

    async def main() -> None:
        await asyncio.gather(clock.sleep(5), clock.sleep(3))  # one timeline: 5 s pass
        await clock.sleep(2)

    began = time.monotonic()
    asyncio.run(main())
    assert clock() == start + timedelta(seconds=7)
    assert time.monotonic() - began < 1
