"""The orphan sweep: removes stored chunks no commit names, safely while other storage
processes serve the same store.

A chunk no commit names is one staged past the committed count and never committed
(a failed request, a crash, a PUT that published after a discard), one at a committed
index under another leaf hash (a late PUT of another process, on S3), or any chunk of
a deleted session (a PUT that published after the erase).  Per session the record is
read first, then the chunks are listed, and:

- a deleted session loses every chunk, at any age (none can be committed again);
- a live session loses a chunk no commit names only once it is older than the grace
  (`LUCID_ORPHAN_GRACE_SECONDS`): a younger one may be a PUT whose commit is coming.
  A commit refuses a chunk staged more than half the grace ago, so the sweep never
  removes what a commit is about to name;
- chunks of a session with no record are left alone and counted: records are made
  before any chunk is accepted and never removed, so such chunks come from a restored
  database or another deployment on the same prefix, and removing them would lose data.

Each pass examines at most `batch` sessions, continuing where the last one stopped.  At
start-up storage runs a whole sweep; with the local directory (one process, by its lock)
that one uses no grace, as nothing can be in flight then.  Findings go to the log and to
Prometheus (`lucid_orphan_*`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from sessions.common.errors import ServiceError, SessionNotFound
from sessions.common.states import SessionState
from sessions.common.web import Metrics
from sessions.storage.chunkstore import StoredChunk
from sessions.storage.records import SessionRecord
from sessions.storage.service import StorageService

log = logging.getLogger("lucid.storage.sweep")
DEFAULT_BATCH = 1000  # sessions examined per periodic pass


@dataclass
class SweepReport:
    """What one pass did."""

    sessions: int = 0
    """Sessions examined."""
    removed: int = 0
    """Chunks removed."""
    kept_young: int = 0
    """Chunks no commit names, kept because they are younger than the grace."""
    unknown: list[str] = field(default_factory=list)
    """Ids of sessions with stored chunks but no record (left alone)."""
    done: bool = True
    """Whether the pass reached the end of the store's sessions (the cursor starts over)."""


class OrphanSweeper:
    """Runs sweep passes over the chunk store's sessions; `run` loops until cancelled."""

    def __init__(self, service: StorageService, metrics: Metrics | None = None, *,
                 batch: int = DEFAULT_BATCH) -> None:
        self.service, self.batch = service, batch
        self._cursor = ""
        self._metrics = None if metrics is None else _SweepMetrics(metrics)

    async def run(self, interval: float) -> None:
        """Sweep one batch every interval seconds (interval > 0), forever; a failed pass is
        logged and tried again next time."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run_pass()
            except ServiceError as exc:
                log.warning("orphan sweep pass stopped: %s (%s)", exc.code, exc.detail)

    async def sweep_all(self, *, grace: bool = True) -> SweepReport:
        """Sweep every session once (grace=False: any age; only where nothing is in flight)."""
        self._cursor = ""
        return await self._pass(None, grace=grace, now=None)

    async def run_pass(self, *, now: datetime | None = None) -> SweepReport:
        """Sweep the next `batch` sessions after the last pass's; report it.

        `now` (default: the service's clock) is what ages are reckoned from.
        """
        return await self._pass(self.batch, grace=True, now=now)

    async def _pass(self, limit: int | None, *, grace: bool, now: datetime | None
                    ) -> SweepReport:
        todo = await self.service.chunks.session_ids(after=self._cursor, limit=limit)
        report = SweepReport(done=limit is None or len(todo) < limit)
        self._cursor = "" if report.done else todo[-1]
        for sid in todo:
            await self._sweep_session(sid, report, grace=grace, now=now)
        self._account(report)
        return report

    async def _sweep_session(self, sid: str, report: SweepReport, *, grace: bool,
                             now: datetime | None) -> None:
        report.sessions += 1
        # Held so that no PUT of this process renames a file into a name listed below, and
        # no commit here checks a chunk the sweep then removes (the local directory's
        # whole guarantee; on S3 other processes are covered by the grace).
        async with self.service.locked(sid):
            await self._judge(sid, report, grace=grace, now=now)

    async def _judge(self, sid: str, report: SweepReport, *, grace: bool,
                     now: datetime | None) -> None:
        started = time.monotonic()
        try:
            rec = await self.service.meta.get_session(sid)
        except SessionNotFound:
            report.unknown.append(sid)
            return
        stored = await self.service.chunks.stored(sid)  # listed after the record was read
        strays = await self._strays(rec, stored)
        if rec.state is SessionState.DELETED:
            doomed = stored
        else:
            doomed = [c for c in strays if not grace or self.service.aged(c, now)]
            report.kept_young += len(strays) - len(doomed)
        if doomed and time.monotonic() - started > self.service.grace.total_seconds() / 4:
            # Its record may be stale by now: a commit may have landed since it was read.
            log.warning("orphan sweep skipped session %s this pass: reading and listing it "
                        "took longer than a quarter of the grace", sid)
        elif doomed:
            await self.service.chunks.remove(sid, doomed)
            report.removed += len(doomed)
            log.info("orphan sweep removed %d chunk(s) of session %s (%s)", len(doomed), sid,
                     rec.state.value)

    async def _strays(self, rec: SessionRecord, stored: list[StoredChunk]) -> list[StoredChunk]:
        """Return the stored chunks no commit of rec names."""
        strays = [c for c in stored if c.index >= rec.chunk_count]
        if rec.state is SessionState.DELETED:
            return strays
        # A committed index holding more than one chunk holds a late PUT's besides the
        # committed one (an index with one chunk holds the committed one).
        counts = Counter(c.index for c in stored if c.index < rec.chunk_count)
        for index in sorted(i for i, n in counts.items() if n > 1):
            leaf = (await self.service.meta.committed_chunk(rec, index)).leaf_hash
            strays += [c for c in stored if c.index == index and c.leaf_hash != leaf]
        return strays

    def _account(self, report: SweepReport) -> None:
        if report.unknown:
            log.warning("%d session(s) have stored chunks but no record; left alone "
                        "(first: %s)", len(report.unknown), report.unknown[0])
        if self._metrics is not None:
            self._metrics.removed.inc(report.removed)
            self._metrics.sessions.inc(report.sessions)
            self._metrics.young.set(report.kept_young)
            self._metrics.unknown.set(len(report.unknown))
            self._metrics.last_pass.set(time.time())


class _SweepMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.sessions = MetricCounter("lucid_orphan_sweep_sessions_total",
                                "sessions the orphan sweep examined", registry=r)
        self.removed = MetricCounter("lucid_orphan_chunks_removed_total",
                               "stored chunks no commit names that the sweep removed",
                               registry=r)
        self.young = Gauge("lucid_orphan_chunks_young",
                           "chunks no commit names kept by the latest pass (younger than "
                           "the grace)", registry=r)
        self.unknown = Gauge("lucid_orphan_unknown_sessions",
                             "sessions with stored chunks but no record, seen by the latest "
                             "pass (left alone)", registry=r)
        self.last_pass = Gauge("lucid_orphan_sweep_last_pass_timestamp_seconds",
                               "when the latest orphan sweep pass ended (Unix time)",
                               registry=r)
