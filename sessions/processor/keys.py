"""The processor's key material: the master key, the retention periods' key-encryption keys
and the node signing key.

Local mode generates the master and signing keys once into `<data_dir>/secrets/`
(mode 0600) and says where; production mode refuses to start unless both `*_FILE`
settings point at valid files.  A configured key is never replaced by a fresh one.

A session with a retention has its data key wrapped under the key-encryption key
(KEK) of the UTC month it expires in (`PeriodKeys`, files `<kek_dir>/YYYY-MM.key`,
0600, never in the database).  Once that month has ended and no session still holds
a key under it, the retention sweep destroys the file: every copy of those wrapped
keys, in the oplog, a journal or a backup, is then undecryptable.  Sessions kept
forever, and sessions under legal hold, are wrapped under the master key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sessions.common.errors import KeyRotationRefused, ServiceError
from sessions.common.secrets import ConfigError, write_new_secret
from sessions.core import (
    CoreError,
    KeyMaterialError,
    KeyPeriod,
    MasterKey,
    NoteSigner,
    NoteVerifier,
    UnwrapError,
    WrappedKey,
    key_history_from_json,
    signing_period,
)
from sessions.processor.config import Settings

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

    def for_period(self, period: str) -> MasterKey:
        """Return the period's key, creating its file (mode 0600) if there is none."""
        key = self._by_period.get(period)
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
            for key in self._by_period.values():
                if key.key_id == key_id:
                    return key
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
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("destroyed the key-encryption key of retention period %s: its sessions "
                    "are erased in every copy of the database", period)
        return True


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
        period = None if self.periods is None else self.periods.get(wrapped.key_id)
        if period is not None:
            return period.unwrap(wrapped, session_id=session_id)
        return self.master_for(wrapped.key_id).unwrap(wrapped, session_id=session_id)

    def wrapping_key(self, expires: datetime | None) -> MasterKey:
        """Return the key a session expiring at `expires` is wrapped under (None: forever)."""
        if expires is None or self.periods is None:
            return self.master
        return self.periods.for_period(period_of(expires))

    def master_for(self, key_id: str) -> MasterKey:
        """Return the current or a previous master key with this id; raise UnwrapError."""
        for key in (self.master, *self.previous):
            if key.key_id == key_id:
                return key
        raise UnwrapError("no master key with this id is configured")

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier()

    def verifier_of(self, signed: bytes | str | None) -> NoteVerifier:
        """Return the verifier of the history key that signed this note (else the current one).

        Only picks the key: opening the note with it still checks the signature.
        """
        if signed is None or not self.history:
            return self.verifier
        raw = signed.encode("utf-8") if isinstance(signed, str) else signed
        try:
            return signing_period(raw, self.history).verifier
        except CoreError:
            return self.verifier

    def origin(self, session_id: str) -> str:
        """Return the checkpoint origin line for a session of this node."""
        return f"{self.signer.name}/sessions/{session_id}"


def _paths(settings: Settings) -> tuple[Path, Path]:
    master = settings.master_key_file or settings.secrets_dir / "master.key"
    signing = settings.signing_key_file or settings.secrets_dir / "signing.key"
    return master, signing


def ensure_local_keys(settings: Settings) -> list[str]:
    """Generate the missing local key files; return one message per file generated.

    Production mode never generates: it returns [] and `load_node_keys` decides.
    """
    if settings.production:
        return []
    master, signing = _paths(settings)
    made = []
    if settings.master_key_file is None and write_new_secret(master,
                                                             MasterKey.generate().to_text()):
        made.append(f"generated master key at {master} (mode 0600)")
    if settings.signing_key_file is None and write_new_secret(
            signing, NoteSigner.generate(settings.node_name).key_text()):
        made.append(f"generated node signing key at {signing} (mode 0600)")
    return made


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
    master_path, signing_path = _paths(settings)
    try:
        master = MasterKey.from_file(master_path)
    except KeyMaterialError as exc:
        raise ConfigError(f"master key: {exc}") from None
    try:
        signer = NoteSigner.from_key_text(_read(signing_path, "node signing key"))
    except KeyMaterialError as exc:
        raise ConfigError(f"node signing key ({signing_path}): {exc}") from None
    previous = []
    listed = (settings.previous_master_key_files or "").split(",")
    for name in filter(None, (p.strip() for p in listed)):
        try:
            previous.append(MasterKey.from_file(Path(name)))
        except KeyMaterialError as exc:
            raise ConfigError(f"previous master key: {exc}") from None
    if "node_name" in settings.model_fields_set and signer.name != settings.node_name:
        raise ConfigError(f"LUCID_NODE_NAME is {settings.node_name!r} but the signing key is "
                          f"named {signer.name!r}; they must agree")
    periods = PeriodKeys(settings.kek_dir or settings.secrets_dir / "kek")
    history = record_signing_key(history_path(settings), signer.verifier(), now=_now())
    return NodeKeys(master=master, signer=signer, previous=tuple(previous), periods=periods,
                    history=history)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_path(settings: Settings) -> Path:
    """Return the file of the signing-key history (public: verifier keys and times)."""
    return settings.signing_key_history_file or settings.data_dir / "processor" / \
        "signing-keys.json"


def read_history(path: Path) -> tuple[KeyPeriod, ...]:
    """Return the recorded signing-key periods ((), if the file does not exist yet)."""
    try:
        return key_history_from_json(json.loads(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, NotADirectoryError):
        return ()
    except (OSError, ValueError, KeyMaterialError) as exc:
        raise ConfigError(f"signing-key history {path} is unreadable or malformed "
                          f"({type(exc).__name__})") from None


def _write_atomically(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_history(path: Path, history: tuple[KeyPeriod, ...]) -> None:
    _write_atomically(path, json.dumps([p.to_json() for p in history], indent=2) + "\n", 0o644)


def record_signing_key(path: Path, current: NoteVerifier, *, now: str) -> tuple[KeyPeriod, ...]:
    """Return the history with `current` as its last, open period, written back if it changed.

    A key seen for the first time (first start, or a key file replaced by the operator)
    closes the previous period at `now`.  Going back to a retired key is refused.  A file
    that cannot be written (read-only root) is logged, not fatal.
    """
    history = read_history(path)
    text = current.key_text()
    if history and history[-1].verifier_key == text:
        return history
    if any(p.verifier_key == text for p in history):
        raise ConfigError("the signing key is a retired key of the signing-key history; "
                          "configure the current key (or a new one)")
    if history and history[-1].not_after is None:
        history = (*history[:-1], dataclasses.replace(history[-1], not_after=now))
    history = (*history, KeyPeriod(verifier_key=text, not_before=None if not history else now))
    try:
        _write_history(path, history)
    except OSError as exc:  # a read-only root (containers): publish it, say where to keep it
        log.warning("signing-key history not written to %s (%s): GET /v1/node publishes it "
                    "until restart; keep it in LUCID_SIGNING_KEY_HISTORY_FILE",
                    path, exc.strerror or type(exc).__name__)
    return history


def rotate_signing_key(settings: Settings, keys: NodeKeys, *,
                       compromised_after: str | None) -> NodeKeys:
    """Return the node's keys with a fresh signing key, the old one retired in the history.

    Local keys only (KeyRotationRefused if LUCID_SIGNING_KEY_FILE is configured: replace
    that file and restart instead).  The new key file is written before the history, so
    a crash in between is repaired at the next start by `record_signing_key`.
    """
    if settings.signing_key_file is not None:
        raise KeyRotationRefused("the signing key comes from LUCID_SIGNING_KEY_FILE: put a "
                                 "new key in that file and restart the processor; the "
                                 "history records the change")
    now = _now()
    signer = NoteSigner.generate(keys.signer.name)
    _write_atomically(_paths(settings)[1], signer.key_text() + "\n", 0o600)
    retired = dataclasses.replace(keys.history[-1], not_after=now,
                                  compromised_after=compromised_after)
    history = (*keys.history[:-1], retired,
               KeyPeriod(verifier_key=signer.verifier().key_text(), not_before=now))
    _write_history(history_path(settings), history)
    log.warning("rotated the node signing key: key hash %08x retired, %08x current",
                keys.signer.key_hash, signer.key_hash)
    return dataclasses.replace(keys, signer=signer, history=history)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: file {path} cannot be read ({type(exc).__name__})") from None
