"""The processor's key material, by job; `load_node_keys` is the one entry.

- `master`: the master keys and the session data keys they wrap;
- `periods`: the retention periods' key-encryption keys (`PeriodKeys`, `period_of`,
  `period_end`), destroyed by the retention sweep to erase a month's sessions;
- `signing`: the node signing key and its history.

Local mode generates the master and signing keys once into `<data_dir>/secrets/`
(mode 0600) and says where; production mode refuses to start unless both `*_FILE`
settings point at valid files.  A configured key is never replaced by a fresh one.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime

from sessions.common.secrets import ConfigError
from sessions.core import KeyPeriod, MasterKey, NoteSigner, NoteVerifier, WrappedKey
from sessions.processor.config import Settings
from sessions.processor.keys.master import (
    ensure_local_master,
    load_master,
    load_previous_masters,
    master_for,
    unwrap_data_key,
    wrapping_key,
)
from sessions.processor.keys.periods import (
    KeyStoreUnavailable,
    PeriodKeys,
    period_end,
    period_of,
)
from sessions.processor.keys.signing import (
    ensure_local_signer,
    history_path,
    history_verifier,
    load_signer,
    read_history,
    record_signing_key,
    rotate,
    timestamp,
)

__all__ = ["KeyStoreUnavailable", "NodeKeys", "PeriodKeys", "ensure_local_keys", "history_path",
           "load_node_keys", "period_end", "period_of", "read_history", "record_signing_key",
           "rotate_signing_key"]

log = logging.getLogger("lucid.processor.keys")


@dataclass(frozen=True)
class NodeKeys:
    """The keys only the processor holds."""

    master: MasterKey
    signer: NoteSigner
    previous: tuple[MasterKey, ...] = ()
    periods: PeriodKeys | None = field(default=None, compare=False)
    history: tuple[KeyPeriod, ...] = ()
    """Every signing key the node has used, the current one last (public data)."""

    def unwrap(self, wrapped: WrappedKey, *, session_id: str) -> bytes:
        """Return a session's data key, unwrapped by whichever of our keys wrapped it.

        Raises UnwrapError when no master or period key we hold has the wrapped key's id
        (a destroyed period key: the session is erased).
        """
        return unwrap_data_key(wrapped, session_id=session_id,
                               masters=(self.master, *self.previous), periods=self.periods)

    def wrapping_key(self, expires: datetime | None) -> MasterKey:
        """Return the key a session expiring at `expires` is wrapped under (None: forever)."""
        return wrapping_key(self.master, self.periods, expires)

    def master_for(self, key_id: str) -> MasterKey:
        """Return the current or a previous master key with this id; raise UnwrapError."""
        return master_for((self.master, *self.previous), key_id)

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier()

    def verifier_of(self, signed: bytes | str | None) -> NoteVerifier:
        """Return the verifier of the history key that signed this note (else the current one).

        Only picks the key: opening the note with it still checks the signature.
        """
        return history_verifier(self.history, signed, self.verifier)

    def origin(self, session_id: str) -> str:
        """Return the checkpoint origin line for a session of this node."""
        return f"{self.signer.name}/sessions/{session_id}"


def ensure_local_keys(settings: Settings) -> list[str]:
    """Generate the missing local key files; return one message per file generated.

    Production mode never generates: it returns [] and `load_node_keys` decides.
    """
    if settings.production:
        return []
    return [m for m in (ensure_local_master(settings), ensure_local_signer(settings)) if m]


def load_node_keys(settings: Settings) -> NodeKeys:
    """Return the node's keys, or raise ConfigError saying exactly what is missing or wrong."""
    if settings.production:
        missing = [env for env, value in (("LUCID_MASTER_KEY_FILE", settings.master_key_file),
                                          ("LUCID_SIGNING_KEY_FILE", settings.signing_key_file))
                   if value is None]
        if missing:
            raise ConfigError("production mode needs " + " and ".join(missing)
                              + " pointing at secret files")
    for message in ensure_local_keys(settings):
        log.warning(message)
    master = load_master(settings)
    signer = load_signer(settings)
    previous = load_previous_masters(settings)
    periods = PeriodKeys(settings.kek_dir or settings.secrets_dir / "kek")
    history = record_signing_key(history_path(settings), signer.verifier(), now=timestamp())
    return NodeKeys(master=master, signer=signer, previous=previous, periods=periods,
                    history=history)


def rotate_signing_key(settings: Settings, keys: NodeKeys, *,
                       compromised_after: str | None) -> NodeKeys:
    """Return the node's keys with a fresh signing key, the old one retired in the history.

    Local keys only (KeyRotationRefused if LUCID_SIGNING_KEY_FILE is configured: replace
    that file and restart instead); see `signing.rotate`.
    """
    signer, history = rotate(settings, keys.signer, keys.history,
                             compromised_after=compromised_after)
    return dataclasses.replace(keys, signer=signer, history=history)
