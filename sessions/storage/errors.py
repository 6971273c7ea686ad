"""Storage's own error codes, rendered by the one mapping in `sessions.common.errors`."""

from __future__ import annotations

from sessions.common.errors import ServiceError


class LeafHashMismatch(ServiceError):
    """The streamed bytes do not hash to the X-Lucid-Leaf-Hash the caller stated."""

    status = 400
    code = "leaf_hash_mismatch"
    detail = "the chunk's bytes do not match X-Lucid-Leaf-Hash; nothing was stored"


class ChunkChecksumMismatch(ServiceError):
    """The streamed bytes do not have the Upload-Checksum the caller stated."""

    status = 400
    code = "chunk_checksum_mismatch"
    detail = "the chunk's bytes do not match its Upload-Checksum; nothing was stored"


class ChunkCommitted(ServiceError):
    """A PUT targets an index that is already committed; committed chunks are immutable."""

    status = 409
    code = "chunk_committed"
    detail = "this chunk is already committed and cannot be replaced"


class ChunkNotStaged(ServiceError):
    """A commit names a chunk whose staged file is absent or has another length."""

    status = 409
    code = "chunk_not_staged"
    detail = "a chunk to commit was not staged with the stated sealed_length"


class StagingDiscarded(ServiceError):
    """A PUT began before its session's staged chunks were discarded; it may not publish."""

    status = 409
    code = "staging_discarded"
    detail = "the session's staged chunks were discarded while this chunk was sent; not stored"


class StorageUnavailable(ServiceError):
    """The metadata database or the chunk directory failed; the detail never says how."""

    status = 503
    code = "storage_unavailable"
    detail = "the storage backend failed; retry later"


class StorageFull(ServiceError):
    """The chunk directory's file system is out of space or quota."""

    status = 507
    code = "storage_full"
    detail = "the storage volume is full"
