"""docs/tus.md stays honest: each row of its MUST table names tests, and each one exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tus.md"
REF = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def table_rows() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    table = text.split("## The protocol's MUSTs and the tests that check them", 1)[1]
    return [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| § ", "| ---"))]


@cache
def defined_in(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    return frozenset(node.name for node in tree.body
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef))


def test_every_row_of_the_must_table_names_a_test() -> None:
    rows = table_rows()
    assert len(rows) >= 25
    for row in rows:
        assert REF.search(row), f"no test named in: {row}"


def test_every_test_the_doc_names_exists() -> None:
    named = REF.findall(DOC.read_text(encoding="utf-8"))
    assert named
    missing = [f"{path}::{name}" for path, name in named if name not in defined_in(path)]
    assert not missing, missing
