"""Issue #10's "Done when": a required field added to the contract's `Session` fails
`mypy --strict` at every hop that builds a session, and passes once each is filled in.

The tree is copied to a temporary directory; `new_field: int` is added to
`sessions.contract.models.Session`; mypy runs on `sessions` and on the test fakes that
build the processor's answers (`tests/api/fakes.py`).  The places that construct a
`Session` or a `StoredSession` (its subclass for the storage hop) are found apart from
mypy, by an AST scan for calls with keyword arguments; mypy must name exactly those
lines, and nothing else.  Then `new_field=0, ` is written into each call mypy named,
and mypy must pass.

Hops that *parse* a session instead of building one cannot fail at type-check time,
and need not: the processor reading storage's answers (`SessionRow.public`, the
storage client's records), the gateway's `ProcessorClient` and the CLI's `LucidClient`
(both read answers through `sessions.contract.operations`) validate each body with
pydantic, so a peer that leaves the field out is refused at run time (the gateway
answers 503 `upstream_unavailable`, the CLI fails with `bad_response`):
`test_a_hop_that_parses_refuses_a_session_without_a_required_field` shows it.  A call
`Session(**fields)` is a parse in this sense (mypy cannot see the keys), so the scan
leaves calls with only `**` arguments out.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.contract import operations as ops
from sessions.contract.models import Session
from tests.api.fakes import session

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ["sessions", "tests/api/fakes.py"]
BUILDERS = {"Session", "StoredSession"}
NEW_FIELD = "    new_field: int = Field(description=\"a field every hop must fill in\")\n"
_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.*)$")


def _copy_tree(dest: Path) -> None:
    skip = shutil.ignore_patterns(".venv", ".git", "node_modules", "__pycache__",
                                  ".pytest_cache", ".ruff_cache", "lucid-data")
    for name in ("sessions", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    if (ROOT / ".mypy_cache").is_dir():  # a warm cache: only what the new field touches
        shutil.copytree(ROOT / ".mypy_cache", dest / ".mypy_cache")


def _python_files(tree: Path) -> list[Path]:
    out: list[Path] = []
    for item in CHECKED:
        path = tree / item
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def constructors(tree: Path) -> set[tuple[str, int]]:
    """Return (relative path, line) of each call `Session(...)`/`StoredSession(...)` (plain
    or as an attribute) that passes at least one named keyword argument."""
    found: set[tuple[str, int]] = set()
    for path in _python_files(tree):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute) else None)
            if name in BUILDERS and any(k.arg is not None for k in node.keywords):
                found.add((str(path.relative_to(tree)), node.lineno))
    return found


def _mypy(tree: Path) -> tuple[int, list[re.Match[str]], str]:
    done = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "mypy", "--strict", "--show-column-numbers", "--no-pretty",
         "--no-error-summary", *CHECKED], cwd=tree, capture_output=True, text=True,
        timeout=900, check=False)
    errors = [m for line in done.stdout.splitlines() if (m := _ERROR.match(line))]
    return done.returncode, errors, done.stdout + done.stderr


def _add_required_field(tree: Path) -> None:
    models = tree / "sessions" / "contract" / "models.py"
    text = models.read_text(encoding="utf-8")
    anchor = text.index("class Session(BaseModel):")
    at = text.index("    id: str\n", anchor) + len("    id: str\n")
    models.write_text(text[:at] + NEW_FIELD + text[at:], encoding="utf-8")


def _fill_in(tree: Path, errors: list[re.Match[str]]) -> None:
    """Write `new_field=0, ` into each call mypy named (at the first `(` after its column)."""
    for path, at in sorted({(e["path"], (int(e["line"]), int(e["col"]))) for e in errors},
                           reverse=True):
        file = tree / path
        lines = file.read_text(encoding="utf-8").splitlines(keepends=True)
        line, col = at
        text = lines[line - 1]
        paren = text.index("(", col - 1) + 1
        lines[line - 1] = text[:paren] + "new_field=0, " + text[paren:]
        file.write_text("".join(lines), encoding="utf-8")


@pytest.mark.heavy
def test_a_required_field_fails_mypy_at_every_hop_that_builds_a_session(
        tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _copy_tree(tree)
    code, errors, out = _mypy(tree)
    assert code == 0 and not errors, f"mypy must pass on the tree as it is:\n{out}"
    sites = constructors(tree)
    assert sites, "no place builds a Session with keyword arguments: nothing to show"

    _add_required_field(tree)
    code, errors, out = _mypy(tree)
    assert code != 0
    named = {(e["path"], int(e["line"])) for e in errors}
    assert all('"new_field"' in e["msg"] for e in errors), out
    assert named == sites, (f"mypy named {sorted(named - sites)} that the scan did not find, "
                            f"and missed {sorted(sites - named)}:\n{out}")

    _fill_in(tree, errors)
    code, errors, out = _mypy(tree)
    assert code == 0 and not errors, f"mypy must pass once every hop fills it in:\n{out}"


def test_the_scan_finds_the_fakes_and_skips_parses(tmp_path: Path) -> None:
    """The scan names keyword constructions only (not `**` unpacking, not model_validate)."""
    (tmp_path / "tests" / "api").mkdir(parents=True)
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "a.py").write_text(
        "x = Session(id='a')\ny = Session(**d)\nz = Session.model_validate(d)\n"
        "w = models.StoredSession(\n    id='b')\n")
    (tmp_path / "tests" / "api" / "fakes.py").write_text("s = Session(id='c', **more)\n")
    assert constructors(tmp_path) == {("sessions/a.py", 1), ("sessions/a.py", 4),
                                      ("tests/api/fakes.py", 1)}
    assert ("tests/api/fakes.py", _line_of(ROOT / "tests/api/fakes.py", "Session(id=")) in \
        constructors(ROOT)


def _line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_hop_that_parses_refuses_a_session_without_a_required_field() -> None:
    """What a required field does where a hop parses: a body without it is refused."""
    full = session()
    assert ops.get_session(full.id).read(200, full.model_dump_json().encode()) == full
    required = [name for name, spec in Session.model_fields.items() if spec.is_required()]
    assert "id" in required and "state" in required
    for name in required:
        with pytest.raises(ops.MalformedAnswer, match="not a Session"):
            ops.get_session(full.id).read(200, full.model_dump_json(exclude={name}).encode())
