"""kill -9 trials: every service, every phase of a session's life, at seeded random moments.

Each trial runs one phase against its own cluster (real processes, 1 MiB chunks so a
few MiB make several chunks), SIGKILLs one service at a seeded random point (after a
random number of body bytes, or a random delay into the request), restarts it and
checks what a user relies on:

- every acknowledged byte is still there and replays identically; with
  `Upload-Checksum` an unacknowledged request left nothing behind;
- the upload resumes to completion, finalizes, replays byte for byte and verifies;
- the store is whole: every committed chunk row has its file, of its sealed length;
  no temp file is left; a deleted session has no key and no files; a rotation
  interrupted and run again leaves every session readable under the new key;
- no service logged a traceback or a secret.

The phases: mid-PATCH without and with `Upload-Checksum`, between requests, during
finalize, during delete, during master-key rotation.  One trial per phase is quick;
the rest are marked `heavy` (`make test-quick` skips them, `make test` runs them all).
"""

from __future__ import annotations

import contextlib
import random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessions.client.launcher import SERVICES
from sessions.common.secrets import write_new_secret
from sessions.core import MasterKey
from tests.e2e.conftest import Cluster
from tests.e2e.support import (
    CHUNK,
    MIB,
    UPLOAD_TYPE,
    RawRequest,
    checksum_header,
    committed_prefix_ok,
    create_session,
    finalize,
    head_offset,
    replay,
    resume,
    session_bytes,
    upload,
    wait_for,
)

PHASES = ("patch", "patch_checksum", "between", "finalize", "delete", "rotate")
SEEDS = range(3)


@dataclass
class Record:
    """What the suite knows about one session: its data and what was acknowledged."""

    data: bytes
    acked: int = 0  # plaintext bytes acknowledged with a 2xx
    state: str = "recording"  # as last acknowledged


@dataclass
class Lab:
    """The crash suite's own cluster and the sessions its trials left behind."""

    cluster: Cluster
    sessions: dict[str, Record] = field(default_factory=dict)
    master_keys: list[Path] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def client(self) -> httpx.Client:
        return self.cluster.client()

    def kill(self, name: str) -> None:
        self.cluster.kill(name)
        self.kills[name] = self.kills.get(name, 0) + 1

    def revive(self, name: str) -> None:
        self.cluster.start(name)
        self.cluster.wait_ready("api")

    def stop(self, name: str) -> None:
        """Stop a service cleanly (SIGTERM): an operator's restart, not a crash."""
        proc = self.cluster.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)

    @property
    def db(self) -> Path:
        return self.cluster.data_dir / "storage" / "metadata.sqlite3"

    @property
    def chunks_root(self) -> Path:
        return self.cluster.data_dir / "storage" / "chunks"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    c = Cluster(tmp_path_factory.mktemp("crash"))
    lab = Lab(c)
    try:
        c.start_all()
        lab.master_keys.append(c.data_dir / "secrets" / "master.key")
        yield lab
    finally:
        c.stop()


@pytest.fixture
def clean_logs(lab: Lab) -> Iterator[None]:
    start = lab.cluster.log_sizes()
    yield
    time.sleep(0.05)
    problems = lab.cluster.log_problems(start)
    assert not problems, "\n\n".join(problems)


# -- looking behind the API: the rows in SQLite and the files on disk ---------------------------

@dataclass
class Store:
    states: dict[str, str]
    keyless: set[str]
    counts: dict[str, int]
    rows: dict[tuple[str, int], int]  # (session, index) -> sealed length
    files: dict[tuple[str, int], int]  # (session, index) -> file size
    temps: list[Path]


def read_store(lab: Lab) -> Store:
    """Return the metadata rows and chunk files as they are now (storage may be running)."""
    db = sqlite3.connect(f"file:{lab.db}?mode=ro", uri=True, timeout=10)
    try:
        sessions = db.execute("SELECT id, state, chunk_count, key_blob IS NULL "
                              "FROM sessions").fetchall()
        rows = db.execute("SELECT session_id, idx, sealed_length FROM chunks").fetchall()
    finally:
        db.close()
    files: dict[tuple[str, int], int] = {}
    temps: list[Path] = []
    if lab.chunks_root.is_dir():
        for path in lab.chunks_root.glob("*/*/*"):
            if path.name.endswith(".lcs"):
                files[(path.parent.name, int(path.name[:-4]))] = path.stat().st_size
            else:
                temps.append(path)
    return Store(states={s: st for s, st, _, _ in sessions},
                 keyless={s for s, _, _, k in sessions if k},
                 counts={s: n for s, _, n, _ in sessions},
                 rows={(s, i): n for s, i, n in rows}, files=files, temps=temps)


def check_store(lab: Lab) -> list[str]:
    """Assert the store is whole; return the orphan files found (staged, never committed)."""
    def settled() -> Store | None:
        store = read_store(lab)
        return None if store.temps else store

    store: Store = wait_for(settled, timeout=10, what="temp chunk files to be removed")
    for sid, state in store.states.items():
        if state == "deleted":
            assert sid in store.keyless, f"deleted session {sid} still has its wrapped key"
        else:
            assert sid not in store.keyless, f"live session {sid} lost its wrapped key"
    for (sid, index), sealed in store.rows.items():
        if store.states[sid] == "deleted":
            continue
        assert index < store.counts[sid], f"row {sid}/{index} beyond chunk_count"
        assert store.files.get((sid, index)) == sealed, (
            f"committed chunk {sid}/{index}: row says {sealed} bytes, file has "
            f"{store.files.get((sid, index))}")
    for sid, count in store.counts.items():
        if store.states[sid] != "deleted":
            assert sum(1 for s, _ in store.rows if s == sid) == count, f"{sid}: rows != count"
    orphans = []
    for (sid, index) in store.files:
        if sid not in store.states:
            orphans.append(f"{sid}/{index} (no session row)")
        elif store.states[sid] == "deleted":
            raise AssertionError(f"deleted session {sid} still has chunk file {index}")
        elif (sid, index) not in store.rows:
            orphans.append(f"{sid}/{index} ({store.states[sid]}, "
                           f"{store.counts[sid]} chunks committed)")
    return orphans


def finish_checks(lab: Lab, sid: str | None) -> None:
    """The checks every trial ends with, orphan staged chunk files included."""
    if sid is not None:
        with lab.client() as api:
            state = api.get(f"/sessions/{sid}").json()["state"]
            if state != "deleted":
                report = api.post(f"/sessions/{sid}/verify").json()
                assert report["ok"] is True, report
    orphans = check_store(lab)
    assert not orphans, f"staged chunk files without a row: {orphans}"


# -- killing at a random moment ----------------------------------------------------------------

def kill_during(lab: Lab, service: str, rng: random.Random, max_delay: float,
                call: Callable[[httpx.Client], httpx.Response]) -> httpx.Response | None:
    """Start `call` on a thread, SIGKILL `service` after a random delay, revive it.

    Returns the response if the call got one (it may have finished before the kill), or
    None if the connection broke.
    """
    delay = rng.uniform(0, max_delay)
    with lab.client() as api, ThreadPoolExecutor(1) as pool:
        future: Future[httpx.Response] = pool.submit(call, api)
        time.sleep(delay)
        lab.kill(service)
        try:
            answer: httpx.Response | None = future.result(timeout=60)
        except httpx.HTTPError:
            answer = None
    lab.revive(service)
    return answer


def send_some(req: RawRequest, body: bytes, n: int) -> None:
    """Send the first n bytes of body in 64 KiB pieces; stop quietly if the server hung up."""
    with contextlib.suppress(OSError):
        for at in range(0, n, 64 * 1024):
            req.send(body[at:min(n, at + 64 * 1024)])


def new_session(lab: Lab, api: httpx.Client, rng: random.Random, tag: str, *,
                low: int = 3 * MIB // 2, high: int = 4 * MIB) -> tuple[str, Record]:
    data = session_bytes(rng.randint(low, high), seed=rng.randrange(1 << 30))
    sid = create_session(api, {"suite": "crash", "trial": tag})["id"]
    rec = lab.sessions[sid] = Record(data)
    return sid, rec


def upload_acked(api: httpx.Client, rec: Record, sid: str, upto: int) -> None:
    assert rec.acked <= upto <= len(rec.data), (rec.acked, upto, len(rec.data))
    upload(api, sid, rec.data[:upto], start=rec.acked, piece=2 * MIB)
    rec.acked = upto


def recover_and_complete(lab: Lab, sid: str) -> None:
    """After the restart: acknowledged bytes intact, then resume, finalize, replay, verify."""
    rec = lab.sessions[sid]
    with lab.client() as api:
        offset = head_offset(api, sid)
        assert offset >= rec.acked, f"acknowledged {rec.acked} bytes, only {offset} remain"
        assert committed_prefix_ok(api, sid, rec.data, offset)
        resume(api, sid, rec.data)
        rec.acked = len(rec.data)
        done = finalize(api, sid)
        rec.state = "completed"
        assert done["offset"] == len(rec.data)
        assert replay(api, sid).content == rec.data


# -- the phases --------------------------------------------------------------------------------

def trial_patch(lab: Lab, service: str, rng: random.Random, tag: str, *,
                checksum: bool) -> str:
    with lab.client() as api:
        sid, rec = new_session(lab, api, rng, tag)
        prefixes = [n for n in (0, CHUNK, 2 * CHUNK, CHUNK + 4321) if n < len(rec.data) - CHUNK]
        upload_acked(api, rec, sid, rng.choice(prefixes))
    body = rec.data[rec.acked:]
    headers = {"Upload-Checksum": checksum_header(body)} if checksum else {}
    req = lab.cluster.open_upload(sid, length=len(body), offset=rec.acked, timeout=20,
                                  headers=headers)
    sent_cap = rng.randrange(1, len(body))  # never the whole body: no answer can be a 2xx
    try:
        send_some(req, body, sent_cap)
        time.sleep(rng.uniform(0, 0.4))
        lab.kill(service)
    finally:
        req.abort()
    lab.revive(service)
    with lab.client() as api:
        # The aborted request may still hold the writer slot for a moment: wait it out.
        offset = wait_for(lambda: _settled_offset(api, sid), timeout=20,
                          what="the interrupted request to end")[1]
    assert rec.acked <= offset <= rec.acked + req.sent, (rec.acked, offset, req.sent)
    if checksum:
        assert offset == rec.acked, "an unacknowledged checksummed request committed bytes"
    recover_and_complete(lab, sid)
    return sid


def _settled_offset(api: httpx.Client, sid: str) -> tuple[bool, int] | None:
    offset = head_offset(api, sid)
    r = api.patch(f"/sessions/{sid}/upload", content=b"",
                  headers={"Upload-Offset": str(offset), "Content-Type": UPLOAD_TYPE})
    return (True, offset) if r.status_code == 200 else None


def trial_between(lab: Lab, service: str, rng: random.Random, tag: str) -> str:
    with lab.client() as api:
        sid, rec = new_session(lab, api, rng, tag)
        upload_acked(api, rec, sid, rng.randint(1, len(rec.data) - 1))
    time.sleep(rng.uniform(0, 0.2))
    lab.kill(service)
    lab.revive(service)
    recover_and_complete(lab, sid)
    return sid


def trial_finalize(lab: Lab, service: str, rng: random.Random, tag: str) -> str:
    with lab.client() as api:
        sid, rec = new_session(lab, api, rng, tag, low=2 * MIB, high=9 * MIB // 2)
        upload_acked(api, rec, sid, len(rec.data))
    answer = kill_during(lab, service, rng, 0.15,
                         lambda api: api.post(f"/sessions/{sid}/finalize"))
    with lab.client() as api:
        state = api.get(f"/sessions/{sid}").json()["state"]
        if answer is not None and answer.status_code == 200:
            rec.state = "completed"
            assert state == "completed", "an acknowledged finalize was lost"
        assert state in ("recording", "finalizing", "completed"), state
        done = finalize(api, sid)
        if answer is not None and answer.status_code == 200:
            assert done["root_hash"] == answer.json()["root_hash"]
        rec.state = "completed"
        assert replay(api, sid).content == rec.data
    return sid


def trial_delete(lab: Lab, service: str, rng: random.Random, tag: str) -> str:
    with lab.client() as api:
        sid, rec = new_session(lab, api, rng, tag, low=2 * MIB, high=9 * MIB // 2)
        upload_acked(api, rec, sid, len(rec.data))
        if rng.random() < 0.5:
            finalize(api, sid)
            rec.state = "completed"
    answer = kill_during(lab, service, rng, 0.08, lambda api: api.delete(f"/sessions/{sid}"))
    with lab.client() as api:
        state = api.get(f"/sessions/{sid}").json()["state"]
        if answer is not None and answer.status_code == 204:
            assert state == "deleted", "an acknowledged delete was undone"
        if state != "deleted":  # not erased: everything must still be there
            assert state == rec.state, (state, rec.state)
            assert replay(api, sid).content == rec.data
        # The client saw no answer (or saw one): it deletes again, which must finish the job.
        assert api.delete(f"/sessions/{sid}").status_code == 204
        rec.state = "deleted"
        assert api.get(f"/sessions/{sid}").json()["state"] == "deleted"
        assert not lab.cluster.session_dir(sid).exists()
    return sid


def trial_rotate(lab: Lab, service: str, rng: random.Random, tag: str) -> None:
    # An operator's rotation: a new master key, the old ones kept as previous keys.
    key = lab.cluster.root / f"master-{len(lab.master_keys)}.key"
    write_new_secret(key, MasterKey.generate().to_text())
    lab.cluster.extra_env["processor"] = {
        "LUCID_MASTER_KEY_FILE": str(key),
        "LUCID_PREVIOUS_MASTER_KEY_FILES": ",".join(str(k) for k in lab.master_keys)}
    lab.master_keys.append(key)
    lab.stop("processor")
    lab.revive("processor")
    answer = kill_during(lab, service, rng, 0.3, lambda api: api.post("/keys/rotate"))
    if answer is not None:
        assert answer.status_code in (200, 503), (answer.status_code, answer.text)
    with lab.client() as api:
        r = api.post("/keys/rotate")
        assert r.status_code == 200, r.text
        counts = r.json()
        assert counts["unknown_key_ids"] == [], counts
        r = api.post("/keys/rotate")  # a second run finds nothing left to do
        assert r.json()["rotated"] == 0 and r.json()["unknown_key_ids"] == [], r.json()
        # Rewrapped keys still open their chunks: the first chunk of a sample of sessions
        # (the last test of this module replays every session in full).
        live = [sid for sid, rec in lab.sessions.items() if rec.state != "deleted" and rec.acked]
        for sid in rng.sample(live, min(8, len(live))):
            got = replay(api, sid, "bytes=0-99")
            assert got.status_code == 206 and got.content == lab.sessions[sid].data[:100], sid
    db = sqlite3.connect(f"file:{lab.db}?mode=ro", uri=True)
    try:
        key_ids = {k for (k,) in db.execute("SELECT DISTINCT key_id FROM sessions "
                                            "WHERE key_id IS NOT NULL")}
    finally:
        db.close()
    assert len(key_ids) <= 1, f"sessions left under several master keys: {key_ids}"


def _params() -> list[Any]:
    params = []
    for seed in SEEDS:
        for p, phase in enumerate(PHASES):
            for service in SERVICES:
                quick = seed == 0 and service == SERVICES[p % len(SERVICES)]
                params.append(pytest.param(phase, service, seed,
                                           id=f"{phase}-{service}-{seed}",
                                           marks=() if quick else pytest.mark.heavy))
    return params


@pytest.mark.parametrize(("phase", "service", "seed"), _params())
def test_kill_9(lab: Lab, clean_logs: None, phase: str, service: str, seed: int) -> None:
    rng = random.Random(f"crash-{phase}-{service}-{seed}")  # noqa: S311 - seeded test schedule
    tag = f"{phase}-{service}-{seed}"
    sid: str | None
    if phase == "patch":
        sid = trial_patch(lab, service, rng, tag, checksum=False)
    elif phase == "patch_checksum":
        sid = trial_patch(lab, service, rng, tag, checksum=True)
    elif phase == "between":
        sid = trial_between(lab, service, rng, tag)
    elif phase == "finalize":
        sid = trial_finalize(lab, service, rng, tag)
    elif phase == "delete":
        sid = trial_delete(lab, service, rng, tag)
    else:
        trial_rotate(lab, service, rng, tag)
        sid = None
    finish_checks(lab, sid)


def test_every_acknowledged_byte_after_all_trials(lab: Lab, clean_logs: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """After every trial and restart: each session replays what was acknowledged, and verifies."""
    assert lab.sessions, "no trial ran"
    with capsys.disabled():
        print(f"\ncrash suite: {sum(lab.kills.values())} SIGKILLs {lab.kills}, "
              f"{len(lab.sessions)} sessions, {time.monotonic() - lab.started:.0f}s")
    with lab.client() as api:
        for sid, rec in lab.sessions.items():
            session = api.get(f"/sessions/{sid}").json()
            assert session["state"] == rec.state, (sid, session["state"], rec.state)
            if rec.state == "deleted":
                continue
            assert session["offset"] >= rec.acked
            assert replay(api, sid).content[:rec.acked] == rec.data[:rec.acked]
            report = api.post(f"/sessions/{sid}/verify").json()
            assert report["ok"] is True, report
    orphans = check_store(lab)
    assert not orphans, f"staged chunk files without a row: {orphans}"

