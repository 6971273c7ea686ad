"""The background scrub: a slow, sampled verify of stored sessions, so damage is found early.

Every `scrub_interval` seconds a pass verifies the next `scrub_sessions_per_pass`
readable sessions (walking the catalogue newest first, then starting over), each
on `scrub_sample_percent` of its chunks, never reading faster than
`scrub_max_bytes_per_second` on average.  Findings go to the processor's
Prometheus metrics (`lucid_scrub_*`) and to its log; nothing is repaired.
`scrub_interval = 0` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter, Gauge

from sessions.common.errors import ServiceError
from sessions.common.states import SessionState
from sessions.common.web import Metrics
from sessions.contract.models import VerifyReport
from sessions.processor.config import Settings
from sessions.processor.engine import Engine

log = logging.getLogger("lucid.processor.scrub")

_SCRUBBED = {SessionState.RECORDING.value, SessionState.FINALIZING.value,
             SessionState.COMPLETED.value, SessionState.FAILED.value}


class Scrubber:
    """Runs scrub passes over the catalogue; `run` loops until cancelled."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self.engine, self.settings = engine, settings
        self._cursor: str | None = None
        self._damaged: set[str] = set()
        r = metrics.registry
        self.sessions = Counter("lucid_scrub_sessions_total", "sessions the scrub verified",
                                ["result"], registry=r)
        self.bad_chunks = Counter("lucid_scrub_bad_chunks_total",
                                  "damaged chunk files the scrub found", registry=r)
        self.findings = Counter("lucid_scrub_metadata_findings_total",
                                "metadata findings the scrub made", registry=r)
        self.damaged = Gauge("lucid_scrub_damaged_sessions",
                             "sessions whose latest scrub found damage", registry=r)
        self.last_pass = Gauge("lucid_scrub_last_pass_timestamp_seconds",
                               "when the latest scrub pass ended (Unix time)", registry=r)

    async def run(self) -> None:
        """Scrub one pass every interval, forever; a failed pass is logged and retried later."""
        while True:
            await asyncio.sleep(self.settings.scrub_interval)
            try:
                await self.run_pass()
            except ServiceError as exc:
                log.warning("scrub pass stopped: %s (%s)", exc.code, exc.detail)

    async def run_pass(self) -> int:
        """Verify the next batch of sessions; return how many were verified."""
        done = 0
        for sid in await self._next_batch():
            report = await self._verify(sid)
            if report is not None:
                done += 1
                await self._throttle(report)
        self.last_pass.set(time.time())
        return done

    async def _next_batch(self) -> list[str]:
        """Return up to scrub_sessions_per_pass readable session ids after the cursor."""
        want = self.settings.scrub_sessions_per_pass
        batch: list[str] = []
        wrapped = False
        while len(batch) < want:
            params = [("limit", str(min(500, want - len(batch))))]
            params += [("cursor", self._cursor)] if self._cursor else []
            page = await self.engine.list_sessions(params)
            batch += [s.id for s in page.items if s.state.value in _SCRUBBED]
            self._cursor = page.next_cursor
            if self._cursor is None:
                if wrapped:
                    break
                wrapped = True  # the end of the catalogue: the next page starts over
        return list(dict.fromkeys(batch))

    async def _verify(self, sid: str) -> VerifyReport | None:
        try:
            report = await self.engine.verify(sid, self.settings.scrub_sample_percent)
        except ServiceError as exc:  # deleted meanwhile, key not held here, storage down ...
            self.sessions.labels("error").inc()
            log.warning("scrub could not verify session %s: %s", sid, exc.code)
            return None
        bad, found = report.bad_chunks, report.metadata_findings
        self.bad_chunks.inc(len(bad))
        self.findings.inc(len(found))
        if report.ok:
            self.sessions.labels("ok").inc()
            self._damaged.discard(sid)
        else:
            self.sessions.labels("damaged").inc()
            self._damaged.add(sid)
            log.warning("scrub found damage in session %s: bad chunks %s; metadata %s; "
                        "root_ok %s; signature_ok %s", sid,
                        [(b.index, b.reason) for b in bad],
                        [(f.what, f.index) for f in found],
                        report.root_ok, report.signature_ok)
        self.damaged.set(len(self._damaged))
        return report

    async def _throttle(self, report: VerifyReport) -> None:
        """Sleep so that the sealed bytes read stay under scrub_max_bytes_per_second."""
        rate = self.settings.scrub_max_bytes_per_second
        if rate <= 0 or not report.chunk_count:
            return
        read = self.settings.chunk_size * report.checked  # an upper bound per chunk
        await asyncio.sleep(read / rate)
