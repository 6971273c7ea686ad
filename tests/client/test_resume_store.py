"""The CLI's resume store (`uploads.json`) under several CLIs writing at once.

Regression: every writer used the same `uploads.json.tmp`, so two uploads started
together could fail with FileNotFoundError or drop each other's entries.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from sessions.client import FileKey, ResumeStore

WRITERS, EACH = 6, 25


def _writer(path: str, n: int) -> None:
    store = ResumeStore(Path(path))
    for i in range(EACH):
        key = FileKey(path=f"/rec/{n}/{i}.bin", size=i, mtime_ns=i, url="http://node")
        store.remember(key, f"session-{n}-{i}")
        if i % 5 == 4:  # forget some again, as finished uploads do
            store.forget(key)


def test_concurrent_writers_keep_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "client" / "uploads.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), n)) for n in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    store = ResumeStore(path)
    for n in range(WRITERS):
        for i in range(EACH):
            key = FileKey(path=f"/rec/{n}/{i}.bin", size=i, mtime_ns=i, url="http://node")
            expected = None if i % 5 == 4 else f"session-{n}-{i}"
            assert store.lookup(key) == expected, (n, i)
    assert sorted(p.name for p in path.parent.iterdir()) == ["uploads.json", "uploads.json.lock"]
