"""The key-encryption keys (KEKs) of retention periods, one 0600 file per UTC month.

A session with a retention has its data key wrapped under the KEK of the UTC month it
expires in (`PeriodKeys`, files `<kek_dir>/YYYY-MM.key`, never in the database).  Once
that month has ended and no session still holds a key under it, the retention sweep
destroys the file: every copy of those wrapped keys, in the oplog, a journal or a backup,
is then undecryptable.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path

from sessions.common.errors import ServiceError
from sessions.common.files import fsync_dir
from sessions.common.secrets import ConfigError, write_new_secret
from sessions.core import KeyMaterialError, MasterKey

log = logging.getLogger("lucid.processor.keys")


class KeyStoreUnavailable(ServiceError):
    """The directory of the retention periods' keys cannot be written (LUCID_KEK_DIR)."""

    status, code = 503, "key_store_unavailable"
    detail = "the node cannot store a retention period key; sessions with a retention are refused"


_PERIOD = re.compile(r"(\d{4})-(\d{2})")


def period_of(moment: datetime) -> str:
    """Return the retention period (UTC month, `YYYY-MM`) a moment falls in."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def period_end(period: str) -> datetime:
    """Return the first instant after a period (`YYYY-MM`): the next month's start, UTC."""
    match = _PERIOD.fullmatch(period)
    if match is None:
        raise ValueError("a period is YYYY-MM")
    year, month = int(match[1]), int(match[2])
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


class PeriodKeys:
    """The key-encryption keys of retention periods, one 0600 file per UTC month.

    Made on first use (O_EXCL: two processors sharing the directory agree on one key),
    read again from the directory when asked for an id not cached, destroyed by the sweep.
    The directory is the truth: a key is served from the cache only while its file still
    holds it, so a key another processor's sweep destroyed is gone here too.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._by_period: dict[str, MasterKey] = {}
        self.load()

    def load(self) -> None:
        """Read every period key file (ConfigError names a damaged one, never its content)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.key")):
            if _PERIOD.fullmatch(path.stem) is None or path.stem in self._by_period:
                continue
            try:
                self._by_period[path.stem] = MasterKey.from_file(path)
            except KeyMaterialError as exc:
                raise ConfigError(f"retention period key: {exc}") from None

    def _cached(self, period: str) -> MasterKey | None:
        """Return the cached key of a period while its file is still there (one stat)."""
        key = self._by_period.get(period)
        if key is not None and not (self.directory / f"{period}.key").exists():
            del self._by_period[period]  # destroyed by another processor sharing the directory
            return None
        return key

    def for_period(self, period: str) -> MasterKey:
        """Return the period's key, creating its file (mode 0600) if there is none."""
        key = self._cached(period)
        if key is None:
            period_end(period)  # checks the form
            path = self.directory / f"{period}.key"
            try:
                made = write_new_secret(path, MasterKey.generate().to_text())
            except OSError as exc:  # e.g. a read-only container without the keys volume
                log.error("cannot write the key of retention period %s in %s (%s)", period,
                          self.directory, type(exc).__name__)
                raise KeyStoreUnavailable() from None
            if made:
                log.info("made the key-encryption key of retention period %s", period)
            try:
                key = self._by_period[period] = MasterKey.from_file(path)
            except KeyMaterialError as exc:
                raise ConfigError(f"retention period key: {exc}") from None
        return key

    def get(self, key_id: str) -> MasterKey | None:
        """Return the period key with this id, looking in the directory again if needed."""
        for attempt in range(2):
            for period, key in list(self._by_period.items()):
                if key.key_id == key_id:
                    return self._cached(period)
            if attempt == 0:
                self.load()  # another processor may have made it
        return None

    def periods(self) -> dict[str, str]:
        """Return {period: key id} of every period key held."""
        return {period: key.key_id for period, key in sorted(self._by_period.items())}

    def destroy(self, period: str, *, key_id: str) -> bool:
        """Delete the period's key file if it still holds key_id (fsync'd); return whether
        it did.  A file remade meanwhile (another key id) is kept."""
        self._by_period.pop(period, None)
        path = self.directory / f"{period}.key"
        try:
            if MasterKey.from_file(path).key_id != key_id:
                self.load()
                return False
            path.unlink()
        except (FileNotFoundError, KeyMaterialError):
            return False
        fsync_dir(self.directory)
        log.warning("destroyed the key-encryption key of retention period %s: its sessions "
                    "are erased in every copy of the database", period)
        return True
