"""The exception families of `sessions.core`.

Each family has one base class; callers catch the base, tests assert the leaf.
Messages are fixed strings: they never echo key material, plaintext or
third-party exception text.
"""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error `sessions.core` raises on bad data."""


class OpenError(CoreError):
    """A sealed chunk could not be opened: truncated, bad header, wrong identity, key or tag.

    Deliberately one type with a fixed message, so a caller cannot tell *which*
    check failed from the outside (no padding/format oracle).
    """

    def __init__(self, message: str = "sealed chunk failed to open") -> None:
        super().__init__(message)


class HeaderError(OpenError):
    """The sealed chunk's header is truncated, has a wrong magic/version or reserved bits set.

    A subclass of OpenError, raised also by the keyless `parse_header`.
    """


class KeyError_(CoreError):
    """Base class of key-handling failures (trailing underscore: KeyError is a builtin)."""


class KeyMaterialError(KeyError_):
    """A master or signing key is missing or malformed."""


class UnwrapError(KeyError_):
    """A wrapped data key did not open under this master key for this session."""


class ProofError(CoreError):
    """A Merkle inclusion or consistency proof is malformed or does not verify."""


class RootMismatchError(ProofError):
    """A proof computed a root different from the expected one."""

    def __init__(self, *, expected: bytes, computed: bytes) -> None:
        super().__init__(f"root mismatch: expected {expected.hex()}, computed {computed.hex()}")
        self.expected = expected
        self.computed = computed


class NoteError(CoreError):
    """A signed note is malformed or its signatures do not check out."""


class MalformedNoteError(NoteError):
    """The note text or a signature line does not follow the C2SP signed-note format."""


class UnknownKeyError(NoteError):
    """A signature line names a key the verifier set does not know."""


class BadSignatureError(NoteError):
    """A signature line names a known key, but the signature does not verify."""


class NoVerifiedSignatureError(NoteError):
    """The note carries no signature from any of the given verifiers."""


class CheckpointError(NoteError):
    """The note verified, but its body is not a valid checkpoint or has the wrong origin."""


class ManifestError(CoreError):
    """A manifest is malformed or internally inconsistent."""


class AuditError(CoreError):
    """An audit log does not match its signed head; `findings` says where, entry by entry."""

    def __init__(self, findings: tuple[str, ...]) -> None:
        super().__init__("; ".join(findings) or "audit log does not verify")
        self.findings = findings


class BundleError(CoreError):
    """An evidence bundle's index is malformed or names files the format does not allow."""
