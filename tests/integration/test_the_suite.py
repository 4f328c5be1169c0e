"""The test suite's own rules: markers select what they say, and a test never passes by
not running."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
