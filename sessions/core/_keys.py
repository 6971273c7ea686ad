"""Envelope encryption: per-session data keys wrapped under the node's master key.

Each session's chunks are sealed under a random 32-byte data key. Only the
data key wrapped (AES-256-GCM) under the master key is ever stored, so
destroying the wrapped key crypto-erases the session, and rotating the master
key rewraps one small blob per session without touching chunk data.

Spec: docs/format.md, "Wrapped data key" and "Master key file".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sessions.core._errors import KeyMaterialError, UnwrapError

__all__ = [
    "DATA_KEY_SIZE",
    "KEY_ID_DOMAIN",
    "MASTER_KEY_SIZE",
    "WRAP_AAD_DOMAIN",
    "WRAP_FORMAT_VERSION",
    "MasterKey",
    "WrappedKey",
    "new_data_key",
    "rewrap",
]

DATA_KEY_SIZE = 32
MASTER_KEY_SIZE = 32
KEY_ID_DOMAIN = b"lucid-sessions/key-id/v1"
WRAP_AAD_DOMAIN = b"lucid-sessions/wrapped-key/v1\x00"
WRAP_FORMAT_VERSION = 1
_NONCE_SIZE = 12
_TAG_SIZE = 16
# version (1) || nonce (12) || encrypted data key (32) || GCM tag (16)
WRAPPED_BLOB_SIZE = 1 + _NONCE_SIZE + DATA_KEY_SIZE + _TAG_SIZE
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_KEY_TEXT_RE = re.compile(r"[0-9a-f]{64}")
# A key file is 64 hex characters plus at most "\r\n"; reading a little more
# than that is enough to tell "too long" without slurping a huge file.
_KEY_FILE_READ_LIMIT = 4096


def new_data_key() -> bytes:
    """Return a fresh random 32-byte data key from the OS CSPRNG."""
    return os.urandom(DATA_KEY_SIZE)


def _wrap_aad(key_id: str, session_id: str) -> bytes:
    """Return the AAD binding a wrapped key to its master key id and session.

    Preconditions: key_id is 16 hex characters; session_id is ASCII with
    1 <= len <= 255. Spec: docs/format.md, "Wrapped data key".
    """
    if not session_id or not session_id.isascii() or len(session_id) > 255:
        raise UnwrapError("session id must be 1..255 ASCII characters")
    kid, sid = key_id.encode("ascii"), session_id.encode("ascii")
    return b"".join((WRAP_AAD_DOMAIN, bytes((len(kid),)), kid, bytes((len(sid),)), sid))


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under the master key `key_id`; safe to store.

    blob = version (0x01) || nonce (12) || AES-256-GCM(data key) || tag (16), 61 bytes.
    Spec: docs/format.md, "Wrapped data key".
    """

    key_id: str
    blob: bytes

    def to_json(self) -> dict[str, str]:
        """Return `{"key_id": ..., "blob": <standard base64>}`."""
        return {"key_id": self.key_id, "blob": base64.b64encode(self.blob).decode("ascii")}

    @classmethod
    def from_json(cls, d: Any) -> WrappedKey:
        """Return the wrapped key encoded by `to_json`; raise UnwrapError if malformed.

        Preconditions: d is a dict with exactly "key_id" (16 lowercase hex) and
        "blob" (standard base64 of 61 bytes).
        """
        if not isinstance(d, dict) or set(d) != {"key_id", "blob"}:
            raise UnwrapError("wrapped key must be an object with exactly key_id and blob")
        key_id, blob_text = d["key_id"], d["blob"]
        if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
            raise UnwrapError("wrapped key id must be 16 lowercase hex characters")
        if not isinstance(blob_text, str):
            raise UnwrapError("wrapped key blob must be a base64 string")
        try:
            blob = base64.b64decode(blob_text.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            raise UnwrapError("wrapped key blob is not valid base64") from None
        if len(blob) != WRAPPED_BLOB_SIZE:
            raise UnwrapError(f"wrapped key blob must be {WRAPPED_BLOB_SIZE} bytes")
        return cls(key_id=key_id, blob=blob)


def _parse_key_text(text: str) -> bytes:
    """Return the 32 key bytes written as text; raise KeyMaterialError naming what is wrong.

    Format: exactly 64 lowercase hex characters, optionally followed by one
    "\\n" or "\\r\\n". Messages never include the text itself.
    """
    body = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not body.strip():
        raise KeyMaterialError("master key is empty")
    if len(body) != 2 * MASTER_KEY_SIZE:
        raise KeyMaterialError(
            f"master key must be exactly {2 * MASTER_KEY_SIZE} hex characters "
            f"(plus an optional newline), found {len(body)} characters"
        )
    if not _KEY_TEXT_RE.fullmatch(body):
        raise KeyMaterialError("master key must contain only lowercase hex characters 0-9a-f")
    return bytes.fromhex(body)


class MasterKey:
    """The node's 32-byte master key: wraps and unwraps per-session data keys.

    Precondition: len(raw) == 32. `repr` shows only the non-secret key id.
    Spec: docs/format.md, "Wrapped data key" and "Master key file".
    """

    __slots__ = ("_aead", "_key_id", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) != MASTER_KEY_SIZE:
            raise KeyMaterialError(f"master key must be exactly {MASTER_KEY_SIZE} bytes")
        self._raw = bytes(raw)
        self._aead = AESGCM(self._raw)
        digest = hmac.new(self._raw, KEY_ID_DOMAIN, hashlib.sha256).digest()
        self._key_id = digest[:8].hex()

    @classmethod
    def generate(cls) -> MasterKey:
        """Return a fresh random master key."""
        return cls(os.urandom(MASTER_KEY_SIZE))

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Return the key written as 64 lowercase hex characters (+ optional newline).

        Raises KeyMaterialError (message never contains the text).
        """
        return cls(_parse_key_text(text))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Return the key stored in the file at `path` (format of `from_text`).

        Raises KeyMaterialError with a message naming the path and the problem
        (missing, unreadable, empty, wrong length, not hex), never the content.
        """
        try:
            with open(path, "rb") as f:
                data = f.read(_KEY_FILE_READ_LIMIT)
        except FileNotFoundError:
            raise KeyMaterialError(f"master key file {os.fspath(path)!r} does not exist") from None
        except OSError as exc:
            raise KeyMaterialError(
                f"master key file {os.fspath(path)!r} cannot be read: {exc.strerror}"
            ) from None
        try:
            return cls.from_text(data.decode("ascii"))
        except UnicodeDecodeError:
            reason = "master key must contain only lowercase hex characters 0-9a-f"
        except KeyMaterialError as exc:
            reason = str(exc)
        raise KeyMaterialError(f"master key file {os.fspath(path)!r}: {reason}") from None

    def to_text(self) -> str:
        """Return the key file content: 64 lowercase hex characters and a newline."""
        return self._raw.hex() + "\n"

    @property
    def key_id(self) -> str:
        """Return the non-secret key id: hex of HMAC-SHA256(key, KEY_ID_DOMAIN)[:8]."""
        return self._key_id

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self._key_id!r})"

    def wrap(self, data_key: bytes, *, session_id: str) -> WrappedKey:
        """Return `data_key` encrypted for `session_id` under this master key.

        Preconditions: len(data_key) == 32; session_id ASCII, 1 <= len <= 255.
        Spec: docs/format.md, "Wrapped data key".
        """
        if not isinstance(data_key, bytes | bytearray) or len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"data key must be exactly {DATA_KEY_SIZE} bytes")
        if not session_id or not session_id.isascii() or len(session_id) > 255:
            raise ValueError("session id must be 1..255 ASCII characters")
        nonce = os.urandom(_NONCE_SIZE)
        ct = self._aead.encrypt(nonce, bytes(data_key), _wrap_aad(self._key_id, session_id))
        return WrappedKey(self._key_id, b"".join((bytes((WRAP_FORMAT_VERSION,)), nonce, ct)))

    def unwrap(self, wrapped: WrappedKey, *, session_id: str) -> bytes:
        """Return the data key inside `wrapped`; raise UnwrapError if it does not open.

        Fails for a different master key (key id mismatch), a different session,
        or any modified byte. Spec: docs/format.md, "Wrapped data key".
        """
        if wrapped.key_id != self._key_id:
            raise UnwrapError(
                f"data key was wrapped under master key {wrapped.key_id!r}, "
                f"not {self._key_id!r}"
            )
        blob = wrapped.blob
        if len(blob) != WRAPPED_BLOB_SIZE or blob[0] != WRAP_FORMAT_VERSION:
            raise UnwrapError("wrapped data key is malformed")
        nonce, ct = blob[1 : 1 + _NONCE_SIZE], blob[1 + _NONCE_SIZE :]
        try:
            key = self._aead.decrypt(nonce, ct, _wrap_aad(self._key_id, session_id))
        except InvalidTag:
            raise UnwrapError("wrapped data key does not open for this session") from None
        return key


def rewrap(wrapped: WrappedKey, *, session_id: str, old: MasterKey, new: MasterKey) -> WrappedKey:
    """Return the same data key wrapped under `new` instead of `old`.

    Master key rotation: the data key, and so every sealed chunk, is unchanged.
    Raises UnwrapError if `wrapped` does not open under `old` for `session_id`.
    """
    return new.wrap(old.unwrap(wrapped, session_id=session_id), session_id=session_id)
