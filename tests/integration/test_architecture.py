"""The dependency rule of ARCHITECTURE.md holds, and the linter that enforces it bites.

`make lint` runs `lint-imports` on the real tree; these tests plant a forbidden import in a
copy of the package and check that the same contracts (pyproject.toml) reject it, so a
contract that silently stopped matching anything would be noticed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "src" / "mailgate", tmp_path / "src" / "mailgate")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(tree: Path, module: str, line: str) -> None:
    path = tree / "src" / Path(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n{line}  # planted by the test\n")


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # An adapter reaching into a service.
        ("mailgate.adapters.secrets", "import mailgate.services.identity", "Layers point inward"),
        # A service using an adapter other than the database.
        ("mailgate.services.tenants", "import mailgate.adapters.secrets", "Layers point inward"),
        # The domain importing a library.
        ("mailgate.domain.access", "import pydantic", "domain is pure"),
        # A cycle between two sibling modules.
        ("mailgate.domain.messages", "import mailgate.domain.delivery", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_the_build(
    tree: Path, module: str, line: str, contract: str
) -> None:
    plant(tree, module, line)
    result = lint(tree)
    assert result.returncode != 0
    broken = result.stdout[result.stdout.index("Broken contracts") :]
    assert contract in broken, result.stdout
