"""The node signing key and its history: every key the node has signed with, and when.

Local mode generates the signing key once into `<data_dir>/secrets/signing.key`
(mode 0600); production mode needs LUCID_SIGNING_KEY_FILE.  The history (public:
verifier keys and times) is recorded at every start and extended by rotation, so
notes signed under a retired key still verify.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from sessions.common.errors import KeyRotationRefused
from sessions.common.files import fsync_dir
from sessions.common.secrets import ConfigError, write_new_secret
from sessions.core import (
    CoreError,
    KeyMaterialError,
    KeyPeriod,
    NoteSigner,
    NoteVerifier,
    key_history_from_json,
    signing_period,
)
from sessions.processor.config import Settings

log = logging.getLogger("lucid.processor.keys")


def signing_path(settings: Settings) -> Path:
    """Return the file of the node signing key (configured, or the local default)."""
    return settings.signing_key_file or settings.secrets_dir / "signing.key"


def ensure_local_signer(settings: Settings) -> str | None:
    """Generate the local signing key file if missing; return the message saying so, if made."""
    path = signing_path(settings)
    if settings.signing_key_file is None and write_new_secret(
            path, NoteSigner.generate(settings.node_name).key_text()):
        return f"generated node signing key at {path} (mode 0600)"
    return None


def load_signer(settings: Settings) -> NoteSigner:
    """Return the node signing key; ConfigError if it is missing, malformed or misnamed."""
    path = signing_path(settings)
    try:
        signer = NoteSigner.from_key_text(_read(path, "node signing key"))
    except KeyMaterialError as exc:
        raise ConfigError(f"node signing key ({path}): {exc}") from None
    if "node_name" in settings.model_fields_set and signer.name != settings.node_name:
        raise ConfigError(f"LUCID_NODE_NAME is {settings.node_name!r} but the signing key is "
                          f"named {signer.name!r}; they must agree")
    return signer


def history_verifier(history: tuple[KeyPeriod, ...], signed: bytes | str | None,
                     current: NoteVerifier) -> NoteVerifier:
    """Return the verifier of the history key that signed this note (else `current`).

    Only picks the key: opening the note with it still checks the signature.
    """
    if signed is None or not history:
        return current
    raw = signed.encode("utf-8") if isinstance(signed, str) else signed
    try:
        return signing_period(raw, history).verifier
    except CoreError:
        return current


def timestamp() -> str:
    """Return now, UTC, as the history records times (RFC 3339, seconds)."""
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
    fsync_dir(path.parent)


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


def rotate(settings: Settings, signer: NoteSigner, history: tuple[KeyPeriod, ...], *,
           compromised_after: str | None) -> tuple[NoteSigner, tuple[KeyPeriod, ...]]:
    """Return a fresh signing key and the history with the old one retired.

    Local keys only (KeyRotationRefused if LUCID_SIGNING_KEY_FILE is configured: replace
    that file and restart instead).  The new key file is written before the history, so
    a crash in between is repaired at the next start by `record_signing_key`.
    """
    if settings.signing_key_file is not None:
        raise KeyRotationRefused("the signing key comes from LUCID_SIGNING_KEY_FILE: put a "
                                 "new key in that file and restart the processor; the "
                                 "history records the change")
    now = timestamp()
    fresh = NoteSigner.generate(signer.name)
    _write_atomically(signing_path(settings), fresh.key_text() + "\n", 0o600)
    retired = dataclasses.replace(history[-1], not_after=now,
                                  compromised_after=compromised_after)
    history = (*history[:-1], retired,
               KeyPeriod(verifier_key=fresh.verifier().key_text(), not_before=now))
    _write_history(history_path(settings), history)
    log.warning("rotated the node signing key: key hash %08x retired, %08x current",
                signer.key_hash, fresh.key_hash)
    return fresh, history


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: file {path} cannot be read ({type(exc).__name__})") from None
