"""The retention sweep: expire, close idle recordings, destroy spent period keys.

It runs in the processor because every step needs the keys: erasure ends in the
destruction of a retention period's key-encryption key, and closing an idle
recording signs its manifest.  Every `sweep_interval` seconds a pass, if the
clock can be trusted (`ClockGuard`):

1. erases up to `sweep_batch` sessions past their expiry (storage's indexed
   `expired` question; held sessions are never listed, and storage refuses to erase
   one held since with 409 `legal_hold`), crypto-erasing before removing chunk files;
2. finalizes up to `sweep_batch` recordings without a commit for `idle_deadline`
   seconds over their committed chunks (every committed byte was acknowledged and
   is signed), and finishes finalizations a crash interrupted;
3. destroys the key of every retention period that has ended and under which no
   session still holds a wrapped key.

Each step is idempotent and settled by storage's compare-and-set, so two sweepers
on one store never collide, and a sweeper killed mid-pass finishes on its next pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sessions.common.errors import ServiceError
from sessions.common.states import SessionState
from sessions.processor.config import Settings
from sessions.processor.engine import Engine
from sessions.processor.keys.periods import period_end
from sessions.processor.storage_client import SessionRow

log = logging.getLogger("lucid.processor.sweep")

CLOCK_FLOOR = datetime(2026, 1, 1, tzinfo=UTC)
"""No clock reading before this is believed (a Pi without an RTC battery boots in 1970)."""
STUCK_FINALIZING = timedelta(seconds=60)
"""A session `finalizing` this long was left so by a crash: the sweep finishes it."""
_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIME)


class ClockGuard:
    """Says what time the sweep may act on, or None when the wall clock is not trusted.

    The wall clock is compared with the monotonic clock (which no NTP step moves)
    at every check: when the wall clock moved more than `tolerance` seconds more or
    less than monotonic time did, it jumped, and nothing is trusted until it has run
    in step for `settle` seconds.  A reading before `CLOCK_FLOOR` is never trusted.
    So a node that boots in the past and is then corrected by NTP expires nothing
    on either clock until the corrected one has held steady.
    """

    def __init__(self, *, tolerance: float, settle: float,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC),
                 mono: Callable[[], float] = time.monotonic,
                 floor: datetime = CLOCK_FLOOR) -> None:
        self.tolerance, self.settle, self.floor = tolerance, settle, floor
        self._wall, self._mono = wall, mono
        self._last: tuple[datetime, float] | None = None
        self._steady_since: float | None = None  # None: no jump seen since start
        self.reason: str | None = None

    def check(self) -> datetime | None:
        """Return the wall time to act on, or None (with `reason` set) if it is not trusted."""
        wall, mono = self._wall(), self._mono()
        last, self._last = self._last, (wall, mono)
        if last is not None:
            drift = (wall - last[0]).total_seconds() - (mono - last[1])
            if abs(drift) > self.tolerance:
                self._steady_since = mono
                self._refuse(f"the wall clock jumped {drift:+.0f} s against the "
                             "monotonic clock")
                return None
        if wall < self.floor:
            self._refuse(f"the wall clock reads {rfc3339(wall)}, before "
                         f"{rfc3339(self.floor)}")
            return None
        if self._steady_since is not None and mono - self._steady_since < self.settle:
            self._refuse(f"the wall clock jumped less than {self.settle:.0f} s ago")
            return None
        self.reason = None
        return wall

    def _refuse(self, reason: str) -> None:
        """Note why the sweep does not act (logged once per new reason)."""
        if reason != self.reason:
            log.warning("retention sweep paused: %s", reason)
        self.reason = reason
        return None


@dataclass
class SweepReport:
    """What one pass did."""

    acted: bool = True
    erased: list[str] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    destroyed_periods: list[str] = field(default_factory=list)


class Sweeper:
    """Runs sweep passes; `run` loops until cancelled."""

    def __init__(self, engine: Engine, settings: Settings, *,
                 guard: ClockGuard | None = None) -> None:
        self.engine, self.settings = engine, settings
        self.guard = guard or ClockGuard(tolerance=settings.clock_jump_tolerance,
                                         settle=settings.clock_settle)

    async def run(self) -> None:
        """Sweep once now and then every interval, forever; a failed pass is retried later."""
        while True:
            try:
                await self.run_pass()
            except ServiceError as exc:
                log.warning("retention sweep pass stopped: %s (%s)", exc.code, exc.detail)
            except Exception as exc:  # the loop must outlive any one pass
                log.error("retention sweep pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.sweep_interval)

    async def run_pass(self) -> SweepReport:
        """Do one pass if the clock is trusted; return what it did."""
        now = self.guard.check()
        if now is None:
            return SweepReport(acted=False)
        report = SweepReport()
        await self._expire(now, report)
        await self._close_idle(now, report)
        await self._destroy_spent_keys(now, report)
        if report.erased or report.finalized or report.destroyed_periods:
            log.info("retention sweep: erased %d, finalized %d, destroyed %d period key(s)",
                     len(report.erased), len(report.finalized), len(report.destroyed_periods))
        return report

    async def _expire(self, now: datetime, report: SweepReport) -> None:
        rows = await self.engine.storage.expired(before=rfc3339(now),
                                                 limit=self.settings.sweep_batch)
        for row in rows:
            try:
                await self.engine.delete(row.id)  # storage erases the key, then the files
            except ServiceError as exc:  # e.g. 409 legal_hold set since it was listed
                log.info("retention sweep: session %s not erased: %s", row.id, exc.code)
                report.skipped.append(row.id)
                continue
            report.erased.append(row.id)
            await self._audit("expire", row.id, f"expires_at={row.expires_at}")

    async def _close_idle(self, now: datetime, report: SweepReport) -> None:
        due: list[SessionRow] = []
        if self.settings.idle_deadline > 0:
            before = now - timedelta(seconds=self.settings.idle_deadline)
            due += await self.engine.storage.idle(state=SessionState.RECORDING,
                                                  before=rfc3339(before),
                                                  limit=self.settings.sweep_batch)
        due += await self.engine.storage.idle(state=SessionState.FINALIZING,
                                              before=rfc3339(now - STUCK_FINALIZING),
                                              limit=self.settings.sweep_batch)
        for row in due:
            try:
                await self.engine.finalize(row.id)
            except ServiceError as exc:  # a writer holds it, it changed, its metadata is bad
                log.warning("retention sweep: idle session %s not finalized: %s",
                            row.id, exc.code)
                report.skipped.append(row.id)
                continue
            report.finalized.append(row.id)
            await self._audit("idle_finalize", row.id)

    async def _audit(self, action: str, session_id: str, detail: str = "") -> None:
        """Record what the sweep did in the audit log, as actor `sweeper`."""
        await self.engine.audit.record(action, session_id, actor="sweeper", client="internal",
                                       detail=detail)

    async def _destroy_spent_keys(self, now: datetime, report: SweepReport) -> None:
        periods = self.engine.keys.periods
        if periods is None:
            return
        ended = {p: kid for p, kid in periods.periods().items() if period_end(p) <= now}
        if not ended:
            return
        usage = await self.engine.storage.key_usage()
        for period, key_id in ended.items():
            if usage.get(key_id, 0) == 0 and periods.destroy(period, key_id=key_id):
                report.destroyed_periods.append(period)
