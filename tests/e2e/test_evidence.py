"""Evidence end to end: signing-key history, export bundles verified offline, the audit log.

These tests rotate the node's signing key, stop every service and tamper with the
metadata database, so they run on clusters of their own (`Cluster` of conftest.py),
never on the suite's shared one: one on SQLite for everything, one on MongoDB for
the audit log's tamper test on a Mongo document.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from sessions.core import NoteSigner, NoteVerifier, audit_origin, open_checkpoint, sign_note
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    NODE_NAME,
    create_session,
    finalize,
    patch,
    recorded_session,
    replay,
    session_bytes,
)
from tests.mongo_server import MongoServer

TIMEOUT = 120
ACTOR = "bootstrap-admin"  # the token id of the admin token (sessions/api/deps.py)


def _start(root: Path, extra: dict[str, str] | None = None) -> Cluster:
    c = Cluster(root)
    if extra:
        c.extra_env["storage"] = extra
    c.start_all()
    return c


@pytest.fixture(scope="module")
def ev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of this module alone, on SQLite."""
    c = _start(tmp_path_factory.mktemp("evidence"))
    try:
        yield c
    finally:
        c.stop()
    problems = c.log_problems()
    assert not problems, "\n\n".join(problems)


@pytest.fixture(scope="module")
def ev_api(ev: Cluster) -> Iterator[httpx.Client]:
    with ev.client() as client:
        yield client


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evidence-cli")


def cli(c: Cluster, workdir: Path, *args: str, ok: bool | None = True
        ) -> subprocess.CompletedProcess[str]:
    """Run `python -m sessions.client ARGS`; check it exits 0 (ok), 1 (ok=False) or not (None)."""
    env = {k: v for k, v in c.env.items() if not k.startswith("LUCID_")}
    env |= {"LUCID_URL": c.url("api"), "XDG_CACHE_HOME": str(workdir / "cache"),
            "LUCID_TOKEN_FILE": str(c.data_dir / "secrets" / "admin.token")}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sessions.client", *args], cwd=workdir, env=env, text=True,
        capture_output=True, timeout=TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    if ok is not None:
        assert proc.returncode == (0 if ok else 1), (args, proc.returncode, output)
    return proc


def audit_of(api: httpx.Client, sid: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 1000} | ({"session_id": sid} if sid else {})
    r = api.get("/audit", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next_start"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


# -- the audit log: every action once ----------------------------------------------------------

def test_every_action_appears_once_with_its_actor(ev: Cluster, ev_api: httpx.Client,
                                                  workdir: Path) -> None:
    data = session_bytes(2 * CHUNK + 12_345, seed=1401)
    sid = create_session(ev_api)["id"]
    for start, end in ((0, CHUNK + 100), (CHUNK + 100, len(data))):  # two PATCHes, 3 chunks
        assert patch(ev_api, sid, start, data[start:end]).status_code == 200
    finalize(ev_api, sid)
    assert replay(ev_api, sid).content == data
    assert replay(ev_api, sid, "bytes=0-99").status_code == 206
    assert ev_api.post(f"/sessions/{sid}/verify").json()["ok"] is True
    assert ev_api.put(f"/sessions/{sid}/hold").status_code == 200
    assert ev_api.delete(f"/sessions/{sid}/hold").status_code == 200
    gone = create_session(ev_api)["id"]
    assert ev_api.delete(f"/sessions/{gone}").status_code == 204

    mine = audit_of(ev_api, sid)
    assert [e["action"] for e in mine] == ["create", "append", "append", "finalize", "replay",
                                           "replay", "verify", "hold", "release"]
    assert [e["detail"] for e in mine[1:3]] == [f"bytes=0-{CHUNK + 99}",
                                                f"bytes={CHUNK + 100}-{len(data) - 1}"]
    assert mine[5]["detail"] == "bytes=0-99"
    assert {(e["actor"], e["client"]) for e in mine} == {(ACTOR, "127.0.0.1")}
    assert [e["action"] for e in audit_of(ev_api, gone)] == ["create", "delete"]
    everything = audit_of(ev_api)
    assert [e["seq"] for e in everything] == list(range(len(everything)))

    # the head is signed by the node, over exactly these entries
    node = httpx.get(ev.url("api") + "/v1/node", trust_env=False).json()
    signed = ev_api.get("/audit/checkpoint")
    assert signed.status_code == 200
    cp = open_checkpoint(signed.content, verifier=NoteVerifier.from_key_text(
        node["verifier_key"]), origin=audit_origin(NODE_NAME))
    assert cp.size == len(everything) and node["audit_origin"] == audit_origin(NODE_NAME)
    out = cli(ev, workdir, "audit", "verify").stdout
    assert f"OK: audit log: {len(everything)} entries" in out
    listed = cli(ev, workdir, "audit", "ls", "--session", sid).stdout
    assert listed.count(sid) == 9 and "finalize" in listed and "release" in listed


# -- the audit log: tampering detected (SQLite) -------------------------------------------------

def _db(c: Cluster) -> sqlite3.Connection:
    db = sqlite3.connect(c.data_dir / "storage" / "metadata.sqlite3", isolation_level=None)
    # The triggers refuse edits through SQL; whoever holds the file can drop them.
    db.execute("DROP TRIGGER IF EXISTS audit_log_append_only_update")
    db.execute("DROP TRIGGER IF EXISTS audit_log_append_only_delete")
    return db


def test_edited_removed_and_truncated_entries_are_detected_on_sqlite(
        ev: Cluster, ev_api: httpx.Client, workdir: Path) -> None:
    recorded_session(ev_api, session_bytes(CHUNK // 2, seed=1402))
    n = len(audit_of(ev_api))
    assert n >= 6
    db = _db(ev)
    rows = {r[0]: r for r in db.execute("SELECT * FROM audit_log")}
    insert = "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    try:
        db.execute("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        out = cli(ev, workdir, "audit", "verify", ok=False).stdout
        assert "entry 2 was edited" in out, out
        db.execute("UPDATE audit_log SET actor = ? WHERE seq = 2", (rows[2][3],))
        cli(ev, workdir, "audit", "verify")

        db.execute("UPDATE audit_log SET detail = 'nothing' WHERE seq = ?", (n - 1,))
        out = cli(ev, workdir, "audit", "verify", ok=False).stdout
        assert f"the last entry ({n - 1}) differs from the signed head" in out, out
        db.execute("UPDATE audit_log SET detail = ? WHERE seq = ?", (rows[n - 1][6], n - 1))

        db.execute("DELETE FROM audit_log WHERE seq = 3")
        out = cli(ev, workdir, "audit", "verify", ok=False).stdout
        assert "entry 3 is missing" in out, out
        db.execute(insert, rows[3])
        cli(ev, workdir, "audit", "verify")

        db.execute("DELETE FROM audit_log WHERE seq >= ?", (n - 2,))
        out = cli(ev, workdir, "audit", "verify", ok=False).stdout
        assert f"truncated: the signed head covers {n} entries, {n - 2} are stored" in out, out
        # the node refuses to sign a new head over the gap (the entry is lost, and logged)
        create_session(ev_api)
        assert len(audit_of(ev_api)) == n - 2
        db.executemany(insert, [rows[n - 2], rows[n - 1]])
    finally:
        db.close()
    create_session(ev_api)  # the log whole again, appends resume on its head
    assert len(audit_of(ev_api)) == n + 1
    cli(ev, workdir, "audit", "verify")


# -- signing keys over time --------------------------------------------------------------------

def test_old_checkpoints_verify_after_the_signing_key_rotates(
        ev: Cluster, ev_api: httpx.Client, workdir: Path) -> None:
    node_url = ev.url("api") + "/v1/node"
    before = httpx.get(node_url, trust_env=False).json()
    old_key = before["verifier_key"]
    assert [p["verifier_key"] for p in before["key_history"]] == [old_key]
    data = session_bytes(CHUNK + 777, seed=1403)
    old_sid = recorded_session(ev_api, data)["id"]

    r = ev_api.post("/keys/signing/rotate")
    assert r.status_code == 200, r.text
    after = httpx.get(node_url, trust_env=False).json()
    new_key = after["verifier_key"]
    assert new_key != old_key and after["key_name"] == before["key_name"]
    old, new = after["key_history"]
    assert (old["verifier_key"], new["verifier_key"]) == (old_key, new_key)
    assert old["not_after"] is not None and old["not_after"] == new["not_before"]
    assert new["not_after"] is None and old["compromised_after"] is None
    new_sid = recorded_session(ev_api, data)["id"]

    # the node still serves and checks the old session, signed by the old key
    assert ev_api.get(f"/sessions/{old_sid}").json()["integrity"] == "ok"
    assert replay(ev_api, old_sid).content == data
    # the CLI picks the key that signed, from the published history, or from pinned keys
    for sid in (old_sid, new_sid):
        assert "OK: session" in cli(ev, workdir, "verify", sid).stdout
    cli(ev, workdir, "verify", old_sid, "--key", old_key)
    cli(ev, workdir, "verify", new_sid, "--key", old_key, "--key", new_key)
    out = cli(ev, workdir, "verify", new_sid, "--key", old_key, ok=False).stdout
    out += cli(ev, workdir, "verify", new_sid, "--key", old_key, ok=False).stderr
    assert "no key of the node's key history signed this note" in out, out
    cli(ev, workdir, "audit", "verify")  # the head was re-signed by the new key

    # the new key leaks: rotate again, marking it compromised; its checkpoints now fail
    cli(ev, workdir, "rotate-signing-key", "--compromised-after", "2026-01-01T00:00:00Z")
    history = httpx.get(node_url, trust_env=False).json()["key_history"]
    assert [p["compromised_after"] for p in history] == [None, "2026-01-01T00:00:00Z", None]
    out = cli(ev, workdir, "verify", new_sid, ok=False).stdout
    assert "marked compromised after 2026-01-01T00:00:00Z" in out, out
    cli(ev, workdir, "verify", old_sid)
    assert [e["action"] for e in audit_of(ev_api)].count("rotate_signing_key") == 2


# -- the audit log on MongoDB ------------------------------------------------------------------

def test_tampering_with_a_mongo_audit_document_is_detected(
        tmp_path_factory: pytest.TempPathFactory, mongo_server: MongoServer,
        workdir: Path) -> None:
    url = mongo_server.url()
    c = _start(tmp_path_factory.mktemp("evidence-mongo"), {"LUCID_METADATA_URL": url})
    try:
        with c.client() as api:
            recorded_session(api, session_bytes(CHUNK // 3, seed=1404))
            n = len(audit_of(api))
        assert n == 3  # create, append, finalize
        cli(c, workdir, "audit", "verify")
        with MongoClient(url, directConnection=True) as client:
            audit = client.get_default_database()["audit"]
            audit.update_one({"_id": 1}, {"$set": {"client": "10.9.9.9"}})
            out = cli(c, workdir, "audit", "verify", ok=False).stdout
            assert "entry 1 was edited" in out, out
            audit.delete_one({"_id": 2})
            out = cli(c, workdir, "audit", "verify", ok=False).stdout
            assert "truncated: the signed head covers 3 entries, 2 are stored" in out, out
    finally:
        c.stop()


# -- evidence export, verified with every service stopped ---------------------------------------

def _rewrite(bundle: Path, out: Path, *, drop: str | None = None,
             change: tuple[str, Any] | None = None) -> Path:
    """Copy a bundle, dropping one member or replacing one member's bytes."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == drop:
                continue
            if change is not None and info.name == change[0]:
                data = change[1](data)
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def _cosign(note: bytes) -> bytes:
    """Add a witness's signature line first, as a C2SP cosigner would (any order is valid)."""
    text, _, sigs = note.partition(b"\n\n")
    witness = sign_note(text.decode() + "\n", NoteSigner.generate("witness.example"))
    return text + b"\n\n" + witness.partition(b"\n\n")[2] + sigs


def _flip(data: bytes, at: int = 100) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def test_export_then_verify_offline_with_every_service_stopped(
        ev: Cluster, ev_api: httpx.Client, workdir: Path, tmp_path: Path) -> None:
    data = session_bytes(2 * CHUNK + 999, seed=1405)
    sid = recorded_session(ev_api, data, piece=CHUNK)["id"]
    bundle = tmp_path / "evidence.tar"
    cli(ev, workdir, "export", sid, "-o", str(bundle))
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names == ["index.json", "manifest.json", "checkpoint.note",
                     *(f"chunks/{i:010d}.lcs" for i in range(3))]
    raw = bundle.read_bytes()
    assert all(data[i:i + 48] not in raw for i in range(0, len(data) - 48, 65_536)), \
        "plaintext in the bundle"
    flipped = _rewrite(bundle, tmp_path / "flipped.tar",
                       change=("chunks/0000000001.lcs", _flip))
    dropped = _rewrite(bundle, tmp_path / "dropped.tar", drop="chunks/0000000002.lcs")
    edited = _rewrite(bundle, tmp_path / "edited.tar", change=(
        "manifest.json", lambda b: b.replace(b'"plaintext_size":', b'"plaintext_size":1', 1)))
    cosigned = _rewrite(bundle, tmp_path / "cosigned.tar", change=("checkpoint.note", _cosign))
    pinned = httpx.get(ev.url("api") + "/v1/node", trust_env=False).json()["verifier_key"]

    ev.stop()  # no node reachable from here on
    ev.procs.clear()
    ok = cli(ev, workdir, "verify", "--bundle", str(bundle)).stdout
    assert f"OK: session {sid}: 3 of 3 chunks checked" in ok, ok
    cli(ev, workdir, "verify", "--bundle", str(bundle), "--key", pinned)
    cli(ev, workdir, "verify", "--bundle", str(cosigned), "--key", pinned)  # a witness's line
    out = cli(ev, workdir, "verify", "--bundle", str(flipped), ok=False).stdout
    assert "FAIL: chunk 1: altered" in out and "chunk 0" not in out, out
    out = cli(ev, workdir, "verify", "--bundle", str(dropped), ok=False).stdout
    assert "FAIL: chunk 2: missing" in out, out
    out = cli(ev, workdir, "verify", "--bundle", str(edited), ok=False).stdout
    assert "FAIL: manifest" in out or "FAIL: the manifest" in out, out
