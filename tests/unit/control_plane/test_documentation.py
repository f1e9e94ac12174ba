"""The README and docs render as written: whole tables, and the first steps a reader needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")


def _outside_code(text: str) -> list[str]:
    """The document's lines, with fenced code blocks blanked out (they hold no tables)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            line = ""
        lines.append("" if fenced else line)
    return lines


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_table_starts_with_a_header_and_has_no_gap(document: Path) -> None:
    # A Markdown table ends at a blank line: rows after one are not a table but text full of
    # pipes, unless they start a new table with a header and a separator row.
    lines = _outside_code(document.read_text(encoding="utf-8"))
    for number, line in enumerate(lines):
        starts_table = line.startswith("|") and (number == 0 or not lines[number - 1].strip())
        if starts_table:
            following = lines[number + 1] if number + 1 < len(lines) else ""
            assert SEPARATOR.match(following), (
                f"{document.name}:{number + 1}: table rows without a header (a blank line "
                f"cut a table?): {line[:60]!r}"
            )


def test_readme_says_how_the_commands_get_on_path_and_where_each_process_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in readme
    assert ".venv/bin/flowyard" in readme
    using = readme[readme.index("## Using it") :]
    using = using[: using.index("\n## ", 1)]
    assert "terminal 1" in using and "terminal 2" in using
    assert using.index("flowyard server start") < using.index("terminal 2")
    assert using.index("terminal 2") < using.index("flowyard-agent --pool local")
