"""The processor's domain: every session operation, over `sessions.core` and storage.

The engine holds the node's keys and caches that can always be rebuilt from
storage (unwrapped session keys, per-session compact Merkle ranges).  It keeps
no other state, so the process can be killed at any moment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sessions.common.errors import (
    ChunkCorrupt,
    InvalidParameter,
    KeyUnavailable,
    OffsetMismatch,
    ServiceError,
    UploadInProgress,
    UpstreamUnavailable,
)
from sessions.common.ids import new_session_id
from sessions.common.models import PrefixCheckResult
from sessions.common.states import SessionState, require_state
from sessions.common.web import Metrics
from sessions.core import (
    CIPHER_NAME,
    FORMAT_VERSION,
    Checkpoint,
    ChunkSealer,
    CompactRange,
    CoreError,
    LeafHashes,
    Manifest,
    UnwrapError,
    consistency_proof,
    inclusion_proof,
    new_data_key,
    rewrap,
    root_hash,
    sign_checkpoint,
)
from sessions.processor.buffers import ChunkBuffers
from sessions.processor.config import Settings
from sessions.processor.ingest import ingest, parse_checksum
from sessions.processor.keys import NodeKeys
from sessions.processor.readback import (
    ByteRange,
    ChunkReader,
    check_chunks,
    parse_range,
    plaintext_stream,
    sample_indexes,
)
from sessions.processor.storage_client import ChunkRow, SessionRow, StorageClient

log = logging.getLogger("lucid.processor")

_READABLE = (SessionState.RECORDING, SessionState.FINALIZING, SessionState.COMPLETED,
             SessionState.FAILED)
_CACHE = 256


@dataclass
class Replay:
    """A verified plaintext stream ready to send: its range, total size and body."""

    range: ByteRange | None
    size: int
    body: AsyncIterator[bytes]

    @property
    def length(self) -> int:
        return self.size if self.range is None else self.range.end - self.range.start


class _Lru(OrderedDict[str, Any]):
    def remember(self, key: str, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _CACHE:
            self.popitem(last=False)
        return value


class Engine:
    """Session operations for the processor's routes."""

    def __init__(self, storage: StorageClient, keys: NodeKeys, settings: Settings,
                 metrics: Metrics) -> None:
        self.storage, self.keys, self.settings, self.metrics = storage, keys, settings, metrics
        workers = max(1, settings.seal_workers)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lucid-seal")
        # One thread, so digests of a request's chunks are updated in submission order.
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lucid-digest")
        self._writers: set[str] = set()
        self._buffers: dict[int, ChunkBuffers] = {}
        self._sealers = _Lru()
        self._trees = _Lru()
        self._manifests = _Lru()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.hasher.shutdown(wait=False, cancel_futures=True)

    # -- bookkeeping -------------------------------------------------------------------------

    @contextmanager
    def _writer(self, sid: str) -> Iterator[None]:
        """Hold the one writer slot of a session; a second writer gets 409."""
        if sid in self._writers:
            raise UploadInProgress()
        self._writers.add(sid)
        try:
            yield
        finally:
            self._writers.discard(sid)

    def _chunk_buffers(self, chunk_size: int) -> ChunkBuffers:
        """Return the reused buffers for chunks of this size (one set per size seen)."""
        buffers = self._buffers.get(chunk_size)
        if buffers is None:
            # Enough for one upload's pipeline: reading, queued, sealing and storing.
            keep = self.settings.seal_workers + self.settings.inflight_chunks + 3
            buffers = self._buffers[chunk_size] = ChunkBuffers(chunk_size, keep)
        return buffers

    def _sealer(self, row: SessionRow) -> ChunkSealer:
        cached = self._sealers.get(row.id)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        wrapped = row.wrapped_key
        if wrapped is None:
            require_state(row.state, *_READABLE, action="read the keys of")
            raise KeyUnavailable()
        try:
            data_key = self.keys.unwrap(wrapped, session_id=row.id)
        except UnwrapError:
            raise KeyUnavailable() from None
        sealer = ChunkSealer(data_key, session_id=row.id, zstd_level=row.zstd_level)
        return self._sealers.remember(row.id, sealer)  # type: ignore[no-any-return]

    async def _tree(self, row: SessionRow) -> CompactRange:
        """Return the session's compact range at its committed size, rebuilt if stale."""
        tree: CompactRange | None = self._trees.get(row.id)
        if tree is None or tree.size != row.chunk_count:
            leaves = await self.storage.leaves(row.id, size=row.chunk_count)
            tree = self._trees.remember(row.id, CompactRange.from_leaf_hashes(leaves))
        return tree

    def _grow_tree(self, sid: str, rows: list[ChunkRow]) -> None:
        tree: CompactRange | None = self._trees.get(sid)
        if tree is None or (rows and tree.size != rows[0].index):
            self._trees.pop(sid, None)
            return
        for r in rows:
            tree.append(r.leaf_hash)
        for r in rows:
            self.metrics.record_sealing(r.length, r.sealed_length)
        self.metrics.chunks_in.labels("processor").inc(len(rows))
        self.metrics.bytes_in.labels("processor", "plaintext").inc(sum(r.length for r in rows))
        self.metrics.bytes_out.labels("processor", "sealed").inc(
            sum(r.sealed_length for r in rows))

    # -- create, read, list ------------------------------------------------------------------

    async def create(self, labels: dict[str, str], retention_days: int | None) -> dict[str, Any]:
        sid = new_session_id()
        wrapped = self.keys.master.wrap(new_data_key(), session_id=sid)
        row = await self.storage.create_session({
            "id": sid, "labels": labels, "retention_days": retention_days,
            "wrapped_key": wrapped.to_json(), "chunk_size": self.settings.chunk_size,
            "zstd_level": self.settings.zstd_level, "format_version": FORMAT_VERSION})
        self._trees.remember(sid, CompactRange())
        return row.public()

    async def get(self, sid: str) -> dict[str, Any]:
        return (await self.storage.get_session(sid)).public()

    async def list_sessions(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        return await self.storage.list_sessions(params)

    # -- upload ------------------------------------------------------------------------------

    async def upload(self, sid: str, *, offset: int, source: AsyncIterable[bytes],
                     checksum_header: str | None, content_length: int | None,
                     max_bytes: int) -> dict[str, Any]:
        """Append one request body at `offset`; return the committed offset and chunk count."""
        checksum = parse_checksum(checksum_header)
        with self._writer(sid):
            row = await self.storage.get_session(sid)
            require_state(row.state, SessionState.RECORDING, action="upload to")
            if offset != row.offset:
                raise OffsetMismatch(f"Upload-Offset is {offset} but the committed offset is "
                                     f"{row.offset}", extra={"offset": row.offset})
            await self._tree(row)
            try:
                done = await ingest(
                    storage=self.storage, sealer=self._sealer(row), session=row, source=source,
                    checksum=checksum, declared_length=content_length, max_bytes=max_bytes,
                    executor=self.executor, hasher=self.hasher,
                    parallel=self.settings.seal_workers, inflight=self.settings.inflight_chunks,
                    on_commit=lambda rows: self._grow_tree(sid, rows),
                    buffers=self._chunk_buffers(row.chunk_size))
            except BaseException:
                self._trees.pop(sid, None)
                # Still holding the writer slot: no other request of ours is staging now.
                await asyncio.shield(self._discard_staged(sid))
                raise
        return {"offset": done.offset, "chunk_count": done.chunk_count}

    async def _discard_staged(self, sid: str) -> None:
        """Drop what a failed request staged but never committed (its sealed bytes are useless)."""
        try:
            discarded = await self.storage.discard_staged(sid)
        except ServiceError as exc:
            # Storage discards them anyway when the session leaves recording or restarts.
            log.warning("could not discard the staged chunks of session %s: %s", sid, exc.code)
            return
        if discarded:
            log.info("discarded %d staged chunk(s) of session %s after a failed request",
                     len(discarded), sid)

    async def prefix_check(self, sid: str, *, offset: int, digest: bytes) -> PrefixCheckResult:
        """Return whether SHA-256 of the committed plaintext equals `digest`.

        Requires offset == the committed offset (else 409 offset_mismatch with it).  The
        committed chunks are read back as replay reads them (leaf hash checked, opened;
        once completed, against the signed manifest) and hashed here: no digest of
        plaintext is kept anywhere, so a check costs one read-back of the session.
        """
        row = await self.storage.get_session(sid)
        require_state(row.state, *_READABLE, action="check the upload of")
        try:
            rows, _ = await self._trusted_rows(row, cached=True)
        except CoreError:
            raise ChunkCorrupt("the session's manifest fails its signed checkpoint") from None
        committed = sum(r.length for r in rows)
        if offset != committed:
            raise OffsetMismatch(f"offset is {offset} but the committed offset is {committed}",
                                 extra={"offset": committed})
        hasher = hashlib.sha256()
        if rows:
            loop = asyncio.get_running_loop()
            reader = self._reader(sid, rows, chunk_size=row.chunk_size)
            async for _, plain in reader.opened(self._sealer(row), range(len(rows))):
                await loop.run_in_executor(self.hasher, hasher.update, plain)
        return PrefixCheckResult(match=hmac.compare_digest(hasher.digest(), digest),
                                 offset=committed)

    # -- checkpoints and proofs --------------------------------------------------------------

    def _sign(self, sid: str, size: int, root: bytes, extensions: tuple[str, ...] = ()) -> bytes:
        return sign_checkpoint(Checkpoint(origin=self.keys.origin(sid), size=size,
                                          root_hash=root, extensions=extensions),
                               self.keys.signer)

    async def _root(self, row: SessionRow, size: int) -> bytes:
        if size == row.chunk_count:
            return (await self._tree(row)).root()
        return root_hash(await self.storage.leaves(row.id, size=size))

    async def checkpoint(self, sid: str, size: int | None) -> bytes:
        """Return the signed checkpoint of the session's tree at `size` (default: now)."""
        row = await self.storage.get_session(sid)
        require_state(row.state, *_READABLE, action="checkpoint")
        size = _check_size(size, row.chunk_count, "size")
        if row.state is SessionState.COMPLETED and size == row.chunk_count:
            # The final checkpoint, as finalize signed it (it also commits to the manifest).
            return Manifest.from_json(await self.storage.manifest(sid)).checkpoint.encode()
        return self._sign(sid, size, await self._root(row, size))

    async def inclusion(self, sid: str, index: int, size: int | None) -> dict[str, Any]:
        row = await self.storage.get_session(sid)
        require_state(row.state, *_READABLE, action="prove")
        size = _check_size(size, row.chunk_count, "size")
        if not 0 <= index < size:
            raise InvalidParameter(f"index must satisfy 0 <= index < size ({size})")
        leaves = await self.storage.leaves(sid, size=size)
        nodes = LeafHashes(leaves)
        return {"index": index, "size": size, "leaf_hash": leaves[index].hex(),
                "root_hash": nodes.subtree_hash(0, size).hex(),
                "proof": [h.hex() for h in inclusion_proof(index, size=size, nodes=nodes)]}

    async def consistency(self, sid: str, old: int, new: int | None) -> dict[str, Any]:
        row = await self.storage.get_session(sid)
        require_state(row.state, *_READABLE, action="prove")
        new = _check_size(new, row.chunk_count, "to")
        if not 0 <= old <= new:
            raise InvalidParameter(f"from must satisfy 0 <= from <= to ({new})")
        leaves = await self.storage.leaves(sid, size=new)
        nodes = LeafHashes(leaves)
        return {"from_size": old, "to_size": new,
                "from_root": root_hash(leaves[:old]).hex(), "to_root": root_hash(leaves).hex(),
                "proof": [h.hex() for h in consistency_proof(old, new_size=new, nodes=nodes)]}

    # -- finalize ----------------------------------------------------------------------------

    async def finalize(self, sid: str) -> dict[str, Any]:
        """Close the session: manifest + final signed checkpoint. Idempotent."""
        with self._writer(sid):
            row = await self.storage.get_session(sid)
            if row.state is SessionState.COMPLETED:
                return row.public()
            require_state(row.state, SessionState.RECORDING, SessionState.FINALIZING,
                          action="finalize")
            row = await self.storage.transition(
                sid, to=SessionState.FINALIZING,
                allowed_from=(SessionState.RECORDING, SessionState.FINALIZING))
            manifest = await self._manifest(row)
            done = await self.storage.finalize(sid, root_hash=manifest.root_hash,
                                               checkpoint=manifest.checkpoint,
                                               manifest=manifest.to_json())
            return done.public()

    async def _manifest(self, row: SessionRow) -> Manifest:
        rows = await self.storage.chunks(row.id, count=row.chunk_count)
        if len(rows) != row.chunk_count:
            raise UpstreamUnavailable("session storage returned an incomplete chunk list")
        root = root_hash([r.leaf_hash for r in rows])
        unsigned = Manifest(
            session_id=row.id, labels=dict(row.raw.get("labels") or {}),
            created_at=str(row.raw["created_at"]), plaintext_size=row.offset,
            sealed_size=sum(r.sealed_length for r in rows), chunk_count=len(rows),
            chunk_size=row.chunk_size, zstd_level=row.zstd_level, cipher=CIPHER_NAME,
            format_version=int(row.raw["format_version"]),
            chunks=tuple(rows),
            root_hash=root, checkpoint="")
        # The final checkpoint signs the root and, in an extension line, the manifest's
        # contents (labels, times, chunk entries), so neither can be edited unnoticed.
        signed = self._sign(row.id, len(rows), root, (unsigned.checkpoint_extension(),))
        manifest = dataclasses.replace(unsigned, checkpoint=signed.decode("utf-8"))
        manifest.check(verifier=self.keys.verifier, origin=self.keys.origin(row.id))
        return manifest

    async def manifest(self, sid: str) -> bytes:
        return await self.storage.manifest(sid)

    # -- read back ---------------------------------------------------------------------------

    async def _trusted_rows(self, row: SessionRow, *, cached: bool = False,
                            ) -> tuple[list[ChunkRow], Manifest | None]:
        """Return the chunk rows to check against: the signed manifest's once completed.

        With `cached`, a manifest this process already verified is reused (a completed
        session's manifest never changes), so a player seeking with many Range requests
        does not re-fetch and re-verify it each time; verify always reads storage anew.
        """
        if row.state is not SessionState.COMPLETED:
            return await self.storage.chunks(row.id, count=row.chunk_count), None
        if cached and (hit := self._manifests.get(row.id)) is not None:
            return hit  # type: ignore[no-any-return]
        manifest = Manifest.from_json(await self.storage.manifest(row.id))
        manifest.check(verifier=self.keys.verifier, origin=self.keys.origin(row.id))
        rows = list(manifest.chunks)
        return self._manifests.remember(row.id, (rows, manifest))  # type: ignore[no-any-return]

    def _reader(self, sid: str, rows: list[ChunkRow], *, chunk_size: int) -> ChunkReader:
        """Return a reader of these rows, reusing the buffers of the session's chunk size."""
        return ChunkReader(self.storage, sid, rows, executor=self.executor,
                           prefetch=self.settings.prefetch_chunks,
                           buffers=self._chunk_buffers(chunk_size).sealed)

    async def replay(self, sid: str, range_header: str | None) -> Replay:
        """Return the verified plaintext stream; the first chunk is checked before returning."""
        row = await self.storage.get_session(sid)
        require_state(row.state, *_READABLE, action="replay")
        try:
            rows, _ = await self._trusted_rows(row, cached=True)
        except CoreError:
            raise ChunkCorrupt("the session's manifest fails its signed checkpoint") from None
        size = sum(r.length for r in rows)
        rng = parse_range(range_header, size=size)
        whole = rng or ByteRange(0, size)
        if size == 0:
            return Replay(rng, 0, _empty())
        reader = self._reader(sid, rows, chunk_size=row.chunk_size)
        body = plaintext_stream(reader, self._sealer(row), rows, whole)
        first = await body.__anext__()
        return Replay(rng, size, self._count_out(_prepend(first, body)))

    async def _count_out(self, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        counter = self.metrics.bytes_out.labels("processor", "plaintext")
        async for piece in body:
            counter.inc(len(piece))
            yield piece

    async def verify(self, sid: str, sample: float) -> dict[str, Any]:
        """Re-hash stored chunks, rebuild the root and compare with the signed checkpoint."""
        if not 0 < sample <= 100:
            raise InvalidParameter("sample must satisfy 0 < sample <= 100")
        row = await self.storage.get_session(sid)
        require_state(row.state, *_READABLE, action="verify")
        signature_ok: bool | None = None
        try:
            rows, manifest = await self._trusted_rows(row)
            signature_ok = True if manifest is not None else None
        except CoreError:
            rows, manifest, signature_ok = await self.storage.chunks(
                sid, count=row.chunk_count), None, False
        stored = await self.storage.chunks(sid, count=row.chunk_count) if manifest else rows
        indexes = sample_indexes(len(rows), sample)
        reader = self._reader(sid, rows, chunk_size=row.chunk_size)
        leaves, bad = await check_chunks(reader, self._sealer(row), indexes)
        for r, s in zip(rows, stored, strict=False):  # metadata that disagrees with the manifest
            if s.leaf_hash != r.leaf_hash and not any(b["index"] == r.index for b in bad):
                bad.append({"index": r.index, "reason": "altered"})
        root_ok: bool | None = None
        if len(indexes) == len(rows):
            rebuilt = [leaves.get(i, b"") for i in range(len(rows))]
            expected = manifest.root_hash if manifest else root_hash([r.leaf_hash for r in rows])
            root_ok = all(len(h) == 32 for h in rebuilt) and root_hash(rebuilt) == expected
        bad.sort(key=lambda b: b["index"])
        return {"session_id": sid, "state": row.state.value, "chunk_count": len(rows),
                "checked": len(indexes), "sampled": len(indexes) != len(rows),
                "ok": not bad and root_ok is not False and signature_ok is not False,
                "root_ok": root_ok, "signature_ok": signature_ok, "bad_chunks": bad}

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, sid: str) -> None:
        """Crypto-erase then remove the session (storage does both, in that order)."""
        await self.storage.delete(sid)
        self._sealers.pop(sid, None)
        self._trees.pop(sid, None)
        self._manifests.pop(sid, None)

    async def rotate_keys(self) -> dict[str, Any]:
        """Rewrap every stored session key under the current master key; chunks are untouched.

        Keys wrapped under a previous master key (LUCID_PREVIOUS_MASTER_KEY_FILES) are
        rewrapped with a compare-and-set on their key id; once none is left, the previous
        key files can be destroyed.  Idempotent.
        """
        current = self.keys.master
        counts = {"rotated": 0, "already_current": 0, "erased": 0}
        unknown: set[str] = set()
        async for row in self.storage.all_sessions():
            wrapped = row.wrapped_key
            if wrapped is None:
                counts["erased"] += 1
            elif wrapped.key_id == current.key_id:
                counts["already_current"] += 1
            else:
                try:
                    old = self.keys.master_for(wrapped.key_id)
                except UnwrapError:
                    unknown.add(wrapped.key_id)
                    continue
                new = rewrap(wrapped, session_id=row.id, old=old, new=current)
                await self.storage.replace_wrapped_key(row.id, expected_key_id=wrapped.key_id,
                                                       wrapped=new)
                counts["rotated"] += 1
        return {"master_key_id": current.key_id, **counts,
                "unknown_key_ids": sorted(unknown)}

    def node(self) -> dict[str, str]:
        return {"key_name": self.keys.signer.name,
                "verifier_key": self.keys.verifier.key_text(),
                "origin_prefix": f"{self.keys.signer.name}/sessions/"}


def _check_size(size: int | None, committed: int, name: str) -> int:
    if size is None:
        return committed
    if not 0 <= size <= committed:
        raise InvalidParameter(f"{name} must satisfy 0 <= {name} <= {committed} (chunks committed)")
    return size


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""
