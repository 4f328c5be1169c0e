"""The README documents every setting: config.py is the source, the README the manual."""

from __future__ import annotations

from pathlib import Path

from mailgate.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme_settings_table() -> None:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Settings") :]
    table = table[: table.index("\n## ", 1)]
    missing = [
        f"MAILGATE_{name.upper()}"
        for name in Settings.model_fields
        if f"| `MAILGATE_{name.upper()}` |" not in table
    ]
    assert not missing, f"add these to the README's settings table: {missing}"


def test_the_two_commands_come_first() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text[text.index("```sh") : text.index("```", text.index("```sh") + 5)]
    assert "make run" in first_block and "make test" in first_block
    assert text.index("make run") < text.index("## ")
