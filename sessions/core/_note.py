"""C2SP signed notes with Ed25519 keys, byte-compatible with golang.org/x/mod/sumdb/note.

A signed note is a text ending in a newline, a blank line, then one or more
signature lines `— <key name> <base64(key hash ‖ signature)>`.  Opening a note
checks every signature from a known key *before* the text is handed back, so a
caller never parses text that no trusted key vouched for.

Spec: https://c2sp.org/signed-note ("Format", "Signatures", "Ed25519 signatures").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sessions.core._errors import (
    BadSignatureError,
    KeyMaterialError,
    MalformedNoteError,
    NoteError,
    NoVerifiedSignatureError,
    UnknownKeyError,
)

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Note",
    "NoteSigner",
    "NoteVerifier",
    "Signature",
    "is_valid_key_name",
    "key_hash",
    "open_note",
    "sign_note",
]

ALG_ED25519 = 0x01
"""The signature type byte of Ed25519 (signed-note, "Signature types")."""

MAX_SIGNATURES = 100
"""x/mod's limit on signature lines per note; the spec asks verifiers to accept at least 16."""

MAX_NOTE_SIZE = 1 << 20
"""Upper bound on a signed note's size in bytes; a checkpoint is a few hundred."""

_SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_HASH16 = re.compile(r"[0-9a-fA-F]{8}")
_ED25519_SIG_SIZE = 64
_NOT_GO_SPACE = "\x1c\x1d\x1e\x1f"  # str.isspace() says yes, Go's unicode.IsSpace says no


def is_valid_key_name(name: str) -> bool:
    """Return whether `name` may name a key: non-empty, UTF-8, no Unicode space, no '+'.

    Spec: signed-note "Format"; mirrors x/mod's isValidName (unicode.IsSpace).
    """
    if not name or "+" in name or any(c.isspace() and c not in _NOT_GO_SPACE for c in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_hash(name: str, public_key: bytes) -> int:
    """Return the key ID: big-endian uint32 of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public_key)[:4].

    Requires len(public_key) == 32.  Spec: signed-note "Ed25519 signatures".
    """
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key)
    return int.from_bytes(digest.digest()[:4], "big")


def _b64decode(text: str) -> bytes | None:
    """Return the strict standard-base64 decoding of `text`, or None if it is not base64."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _parse_key_text(text: str) -> tuple[str, int, bytes]:
    """Return (name, key hash, 32-byte key) of `<name>+<8 hex>+<base64(0x01 ‖ key)>`.

    Mirrors x/mod's NewVerifier/NewSigner: the hash is checked by the caller,
    who knows whether the key is public or a seed.
    """
    name, _, rest = text.partition("+")
    hash16, _, key64 = rest.partition("+")
    raw = _b64decode(key64)
    if not _HASH16.fullmatch(hash16) or raw is None or not is_valid_key_name(name):
        raise KeyMaterialError("malformed note key")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise KeyMaterialError("malformed note key")
    return name, int(hash16, 16), raw[1:]


class NoteVerifier:
    """Verifies Ed25519 note signatures of one named key."""

    __slots__ = ("_hash", "_key", "_name", "_public")

    def __init__(self, name: str, public_key: bytes) -> None:
        """Build a verifier for `name` and a raw Ed25519 public key.

        Requires a valid key name and len(public_key) == 32 (KeyMaterialError otherwise).
        """
        if not is_valid_key_name(name) or len(public_key) != 32:
            raise KeyMaterialError("malformed note key")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise KeyMaterialError("malformed note key") from exc
        self._public = public_key
        self._name = name
        self._hash = key_hash(name, public_key)

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_hash(self) -> int:
        """The key ID, a uint32 (signed-note "Signatures")."""
        return self._hash

    @classmethod
    def from_key_text(cls, vkey: str) -> NoteVerifier:
        """Return the verifier of a key text `<name>+<8 hex hash>+<base64(0x01 ‖ pubkey)>`.

        The hash must match the name and key (KeyMaterialError otherwise).
        Spec: signed-note "Signatures"; x/mod NewVerifier.
        """
        name, declared, public_key = _parse_key_text(vkey)
        verifier = cls(name, public_key)
        if verifier.key_hash != declared:
            raise KeyMaterialError("malformed note key")
        return verifier

    def key_text(self) -> str:
        """Return the verifier key text, as x/mod's NewEd25519VerifierKey writes it."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self._public).decode("ascii")
        return f"{self.name}+{self.key_hash:08x}+{encoded}"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """Return whether `sig` is this key's Ed25519 signature of `msg` (RFC 8032)."""
        if len(sig) != _ED25519_SIG_SIZE:
            return False
        try:
            self._key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoteVerifier):
            return NotImplemented
        return (self.name, self._public) == (other.name, other._public)

    def __hash__(self) -> int:
        return hash((self.name, self._public))

    def __repr__(self) -> str:
        return f"NoteVerifier({self.key_text()!r})"


class NoteSigner:
    """Signs note texts with one named Ed25519 key; its repr never shows the seed."""

    __slots__ = ("_hash", "_name", "_private", "_seed")

    def __init__(self, name: str, seed: bytes) -> None:
        """Build a signer for `name` from a 32-byte Ed25519 seed (KeyMaterialError otherwise)."""
        if not is_valid_key_name(name) or len(seed) != 32:
            raise KeyMaterialError("malformed note key")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed
        self._name = name
        self._hash = key_hash(name, self._public_bytes())

    @property
    def name(self) -> str:
        """The key name."""
        return self._name

    @property
    def key_hash(self) -> int:
        """The key ID, a uint32 (signed-note "Signatures")."""
        return self._hash

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """Return a signer with a fresh random key (the OS CSPRNG, via cryptography)."""
        raw = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name, raw)

    @classmethod
    def from_key_text(cls, skey: str) -> NoteSigner:
        """Return the signer of `PRIVATE+KEY+<name>+<8 hex hash>+<base64(0x01 ‖ seed)>`.

        The hash must match the name and the derived public key (KeyMaterialError otherwise).
        Spec: x/mod NewSigner.
        """
        if not skey.startswith(_PRIVATE_PREFIX):
            raise KeyMaterialError("malformed note key")
        name, declared, seed = _parse_key_text(skey[len(_PRIVATE_PREFIX) :])
        signer = cls(name, seed)
        if signer.key_hash != declared:
            raise KeyMaterialError("malformed note key")
        return signer

    def _public_bytes(self) -> bytes:
        return self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def key_text(self) -> str:
        """Return the secret signer key text, as x/mod's GenerateKey writes it."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self._seed).decode("ascii")
        return f"{_PRIVATE_PREFIX}{self.name}+{self.key_hash:08x}+{encoded}"

    def verifier(self) -> NoteVerifier:
        """Return the verifier of this signer's public key."""
        return NoteVerifier(self.name, self._public_bytes())

    def sign(self, msg: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of `msg` (RFC 8032, deterministic)."""
        return self._private.sign(msg)

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_hash={self.key_hash:#010x})"


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key hash and the signature bytes after the hash."""

    name: str
    key_hash: int
    data: bytes


@dataclass(frozen=True)
class Note:
    """An opened note: its text, the signatures that verified and those from unknown keys."""

    text: str
    verified: tuple[Signature, ...]
    unverified: tuple[Signature, ...]


def _check_text(text: str) -> bytes:
    """Return `text` as UTF-8 if it may be a note text (MalformedNoteError otherwise).

    Requires: ends in '\\n', no ASCII control character but '\\n', encodable as UTF-8.
    Spec: signed-note "Format".
    """
    if not text.endswith("\n") or any(c < " " and c != "\n" for c in text):
        raise MalformedNoteError("malformed note")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedNoteError("malformed note") from exc


def sign_note(text: str, *signers: NoteSigner) -> bytes:
    """Return `text` signed by each signer in turn, as a signed note's bytes.

    Requires: the text is a valid note text (see _check_text), 1 ≤ len(signers) ≤ 100,
    and a result of at most MAX_NOTE_SIZE bytes.
    Spec: signed-note "Format"; output is byte-identical to x/mod's Sign.
    """
    body = _check_text(text)
    if not 1 <= len(signers) <= MAX_SIGNATURES:
        raise MalformedNoteError("a note needs between 1 and 100 signatures")
    lines = []
    for signer in signers:
        blob = signer.key_hash.to_bytes(4, "big") + signer.sign(body)
        lines.append(f"{_SIG_PREFIX}{signer.name} {base64.b64encode(blob).decode('ascii')}\n")
    signed = body + b"\n" + "".join(lines).encode("utf-8")
    if len(signed) > MAX_NOTE_SIZE:  # open_note would refuse it
        raise MalformedNoteError("signed note larger than MAX_NOTE_SIZE")
    return signed


def _split(msg: bytes) -> tuple[bytes, list[str]]:
    """Return (text bytes, signature lines) of a signed note (MalformedNoteError otherwise).

    The text is separated from the signatures by the last blank line.
    Spec: signed-note "Format".
    """
    if len(msg) > MAX_NOTE_SIZE:
        raise MalformedNoteError("malformed note")
    try:
        decoded = msg.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedNoteError("malformed note") from exc
    if any(c < " " and c != "\n" for c in decoded):
        raise MalformedNoteError("malformed note")
    split = msg.rfind(b"\n\n")
    if split < 0 or not msg.endswith(b"\n") or split + 2 == len(msg):
        raise MalformedNoteError("malformed note")
    lines = msg[split + 2 : -1].decode("utf-8").split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError("malformed note")
    return msg[: split + 1], lines


def _parse_signature_line(line: str) -> Signature:
    """Return the Signature of one `— <name> <base64>` line (MalformedNoteError otherwise)."""
    if not line.startswith(_SIG_PREFIX):
        raise MalformedNoteError("malformed note")
    name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    raw = _b64decode(b64)
    if raw is None or not is_valid_key_name(name) or len(raw) < 5:
        raise MalformedNoteError("malformed note")
    return Signature(name, int.from_bytes(raw[:4], "big"), raw[4:])


def _find_verifier(verifiers: Sequence[NoteVerifier], name: str, hash_: int) -> NoteVerifier:
    """Return the one verifier with this name and key hash.

    Raises UnknownKeyError if none matches and NoteError if several do (x/mod's
    "ambiguous key": the verifier list itself is broken).
    """
    found = [v for v in verifiers if v.name == name and v.key_hash == hash_]
    if not found:
        raise UnknownKeyError("unknown key")
    if len(found) > 1:
        raise NoteError("ambiguous key in the verifier list")
    return found[0]


def open_note(msg: bytes, *, verifiers: Sequence[NoteVerifier]) -> Note:
    """Return the note in `msg` once every signature from a known key has verified.

    Requires: msg is a well-formed signed note of at most MAX_SIGNATURES lines
    (MalformedNoteError).  A known key whose signature fails raises
    BadSignatureError; a note with no verified signature raises
    NoVerifiedSignatureError.  Signatures from unknown keys (name or hash
    differ) are kept in `unverified`; repeats of a line or of a known key are
    dropped, as x/mod does.
    Spec: signed-note "Signatures"; x/mod Open.
    """
    text, lines = _split(msg)
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen_keys: set[tuple[str, int]] = set()
    seen_lines: set[str] = set()
    for line in lines:
        sig = _parse_signature_line(line)
        try:
            verifier = _find_verifier(verifiers, sig.name, sig.key_hash)
        except UnknownKeyError:
            if line not in seen_lines:
                seen_lines.add(line)
                unverified.append(sig)
            continue
        if (sig.name, sig.key_hash) in seen_keys:
            continue
        seen_keys.add((sig.name, sig.key_hash))
        if not verifier.verify(text, sig.data):
            raise BadSignatureError("invalid signature from a known key")
        verified.append(sig)
    if not verified:
        raise NoVerifiedSignatureError("note has no verifiable signatures")
    return Note(text.decode("utf-8"), tuple(verified), tuple(unverified))
