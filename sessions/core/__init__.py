"""sessions.core: the sealed-chunk format, envelope keys, RFC 9162 Merkle trees, checkpoints.

A pure library: no web framework, no HTTP, no database, no environment, no
clock.  Everything the services and the offline verifier share lives here.

Where a byte goes:  plaintext --chunk_stream--> ChunkSealer.seal (zstd, then
AES-256-GCM under a per-session data key) --> sealed bytes, whose RFC 9162 leaf
hash enters the session's Merkle tree; the tree's root is signed as a C2SP
checkpoint and recorded, with every chunk, in the session's Manifest.
"""

from sessions.core._audit import (
    AUDIT_GENESIS,
    AuditEntry,
    audit_head,
    audit_origin,
    verify_audit_log,
)
from sessions.core._bundle import BUNDLE_FORMAT, BUNDLE_MEMBERS, BundleIndex, bundle_chunk_name
from sessions.core._checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from sessions.core._chunking import (
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    ChunkBuffer,
    Chunker,
    check_chunk_size,
    chunk_stream,
)
from sessions.core._errors import (
    AuditError,
    BadSignatureError,
    BundleError,
    CheckpointError,
    CoreError,
    HeaderError,
    KeyError_,
    KeyMaterialError,
    MalformedNoteError,
    ManifestError,
    NoteError,
    NoVerifiedSignatureError,
    OpenError,
    ProofError,
    RootMismatchError,
    UnknownKeyError,
    UnwrapError,
)
from sessions.core._keyhistory import KeyPeriod, key_history_from_json, signing_period
from sessions.core._keys import DATA_KEY_SIZE, MasterKey, WrappedKey, new_data_key, rewrap
from sessions.core._manifest import MANIFEST_EXTENSION, ChunkEntry, Manifest
from sessions.core._merkle_hash import (
    EMPTY_ROOT,
    HASH_SIZE,
    LEAF_PREFIX,
    NODE_PREFIX,
    leaf_hash,
    node_hash,
)
from sessions.core._merkle_proof import (
    root_from_consistency_proof,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from sessions.core._merkle_tree import (
    CompactRange,
    LeafHashes,
    NodeSource,
    consistency_proof,
    inclusion_proof,
    root_hash,
)
from sessions.core._note import (
    Note,
    NoteSigner,
    NoteVerifier,
    Signature,
    open_note,
    sign_note,
)
from sessions.core._sealing import (
    CIPHER_NAME,
    DEFAULT_ZSTD_LEVEL,
    FORMAT_VERSION,
    HEADER_SIZE,
    TAG_SIZE,
    ChunkFlags,
    ChunkHeader,
    ChunkSealer,
    SealedChunk,
    parse_header,
    sealed_length_bound,
)

__all__ = [
    "CIPHER_NAME",
    "DATA_KEY_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ZSTD_LEVEL",
    "EMPTY_ROOT",
    "FORMAT_VERSION",
    "HASH_SIZE",
    "HEADER_SIZE",
    "LEAF_PREFIX",
    "MANIFEST_EXTENSION",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "NODE_PREFIX",
    "TAG_SIZE",
    "BadSignatureError",
    "Checkpoint",
    "CheckpointError",
    "ChunkEntry",
    "ChunkFlags",
    "ChunkHeader",
    "ChunkSealer",
    "ChunkBuffer",
    "Chunker",
    "CompactRange",
    "CoreError",
    "HeaderError",
    "KeyError_",
    "KeyMaterialError",
    "LeafHashes",
    "MalformedNoteError",
    "Manifest",
    "ManifestError",
    "MasterKey",
    "NoVerifiedSignatureError",
    "NodeSource",
    "Note",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "OpenError",
    "ProofError",
    "RootMismatchError",
    "SealedChunk",
    "Signature",
    "UnknownKeyError",
    "UnwrapError",
    "WrappedKey",
    "check_chunk_size",
    "chunk_stream",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "new_data_key",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_header",
    "rewrap",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_hash",
    "sealed_length_bound",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
    "AUDIT_GENESIS",
    "AuditEntry",
    "audit_head",
    "audit_origin",
    "verify_audit_log",
    "BUNDLE_FORMAT",
    "BUNDLE_MEMBERS",
    "BundleIndex",
    "bundle_chunk_name",
    "AuditError",
    "BundleError",
    "KeyPeriod",
    "key_history_from_json",
    "signing_period",
]
