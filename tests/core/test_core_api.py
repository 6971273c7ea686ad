"""The public surface of sessions.core is exactly its __all__, and the core does no I/O."""

from __future__ import annotations

import ast
import pathlib

import sessions.core as core

CORE = pathlib.Path(core.__file__).parent
FORBIDDEN = {"fastapi", "starlette", "httpx", "uvicorn", "sqlite3", "pymongo", "os.environ",
             "pydantic", "pydantic_settings", "sessions.common", "sessions.api",
             "sessions.processor", "sessions.storage"}


def test_all_names_exist_and_are_public() -> None:
    for name in core.__all__:
        assert hasattr(core, name), name
        assert not name.startswith("_"), name
    assert len(set(core.__all__)) == len(core.__all__)


def test_every_public_name_of_the_private_modules_is_exported() -> None:
    exported = set(core.__all__)
    for path in CORE.glob("_*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = node.name
                if not name.startswith("_") and name in dir(core):
                    assert name in exported, f"{path.name}: {name} importable but not in __all__"


def test_core_imports_no_framework_driver_or_environment() -> None:
    for path in CORE.glob("*.py"):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                assert not any(mod == f or mod.startswith(f + ".") for f in FORBIDDEN), \
                    f"{path.name} imports {mod}"
        assert "os.environ" not in source and "getenv" not in source, path.name
