"""The master keys and the session data keys they wrap.

Local mode generates the master key once into `<data_dir>/secrets/master.key` (mode
0600); production mode needs LUCID_MASTER_KEY_FILE.  Keys wrapped under a previous
master key (LUCID_PREVIOUS_MASTER_KEY_FILES) still open until `POST /keys/rotate` has
rewrapped them.  Sessions kept forever, and sessions under legal hold, are wrapped under
the current master key; the others under their retention period's key (`periods`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sessions.common.secrets import ConfigError, write_new_secret
from sessions.core import KeyMaterialError, MasterKey, UnwrapError, WrappedKey
from sessions.processor.config import Settings
from sessions.processor.keys.periods import PeriodKeys, period_of


def master_path(settings: Settings) -> Path:
    """Return the file of the master key (configured, or the local default)."""
    return settings.master_key_file or settings.secrets_dir / "master.key"


def ensure_local_master(settings: Settings) -> str | None:
    """Generate the local master key file if missing; return the message saying so, if made."""
    path = master_path(settings)
    if settings.master_key_file is None and write_new_secret(path,
                                                             MasterKey.generate().to_text()):
        return f"generated master key at {path} (mode 0600)"
    return None


def load_master(settings: Settings) -> MasterKey:
    """Return the current master key; ConfigError says what is wrong with its file."""
    try:
        return MasterKey.from_file(master_path(settings))
    except KeyMaterialError as exc:
        raise ConfigError(f"master key: {exc}") from None


def load_previous_masters(settings: Settings) -> tuple[MasterKey, ...]:
    """Return the previous master keys (LUCID_PREVIOUS_MASTER_KEY_FILES); ConfigError names
    a bad one."""
    previous = []
    listed = (settings.previous_master_key_files or "").split(",")
    for name in filter(None, (p.strip() for p in listed)):
        try:
            previous.append(MasterKey.from_file(Path(name)))
        except KeyMaterialError as exc:
            raise ConfigError(f"previous master key: {exc}") from None
    return tuple(previous)


def master_for(masters: tuple[MasterKey, ...], key_id: str) -> MasterKey:
    """Return the master key with this id; raise UnwrapError if none is configured."""
    for key in masters:
        if key.key_id == key_id:
            return key
    raise UnwrapError("no master key with this id is configured")


def unwrap_data_key(wrapped: WrappedKey, *, session_id: str, masters: tuple[MasterKey, ...],
                    periods: PeriodKeys | None) -> bytes:
    """Return a session's data key, unwrapped by whichever period or master key wrapped it.

    Raises UnwrapError when no key held has the wrapped key's id (a destroyed period
    key: the session is erased).
    """
    period = None if periods is None else periods.get(wrapped.key_id)
    if period is not None:
        return period.unwrap(wrapped, session_id=session_id)
    return master_for(masters, wrapped.key_id).unwrap(wrapped, session_id=session_id)


def wrapping_key(master: MasterKey, periods: PeriodKeys | None,
                 expires: datetime | None) -> MasterKey:
    """Return the key a session expiring at `expires` is wrapped under (None: forever)."""
    if expires is None or periods is None:
        return master
    return periods.for_period(period_of(expires))
