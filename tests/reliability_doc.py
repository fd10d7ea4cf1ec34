"""The tables of docs/reliability.md, read by the tests that check them.

Each table sits between `<!-- table: NAME -->` and `<!-- end: NAME -->`. The tests take their
cases from the rows (and fail on a case without a row, or a row without a case), so the page
cannot drift from what the program does. `SEGMOTE_UPDATE_DOCS=1 pytest ...` rewrites a table
from what the tests observed instead of comparing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
UPDATE = os.environ.get("SEGMOTE_UPDATE_DOCS") == "1"


def _span(text: str, name: str) -> tuple[int, int]:
    start = text.index(f"<!-- table: {name} -->")
    start = text.index("\n", start) + 1
    return start, text.index(f"<!-- end: {name} -->")


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def read_table(name: str) -> list[list[str]]:
    """The body rows of table `name`, each a list of cell texts (backticks kept)."""
    start, end = _span(DOC.read_text(encoding="utf-8"), name)
    lines = [ln for ln in DOC.read_text(encoding="utf-8")[start:end].splitlines()
             if ln.strip().startswith("|")]
    return [_cells(ln) for ln in lines[2:]]


def write_table(name: str, header: list[str], rows: list[list[str]]) -> None:
    """Replace table `name` with `rows` (update mode only)."""
    text = DOC.read_text(encoding="utf-8")
    start, end = _span(text, name)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    body = [line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows]
    DOC.write_text(text[:start] + "\n".join(body) + "\n" + text[end:], encoding="utf-8")
