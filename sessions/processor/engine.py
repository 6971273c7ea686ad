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
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sessions.common.checksums import Checksum
from sessions.common.errors import (
    Conflict,
    InvalidParameter,
    InvalidState,
    KeyUnavailable,
    MetadataCorrupt,
    NotFound,
    OffsetMismatch,
    PayloadTooLarge,
    ServiceError,
    UploadInProgress,
)
from sessions.common.ids import new_session_id
from sessions.common.states import SessionState, require_state
from sessions.common.web import Metrics
from sessions.contract.models import (
    AuditPage,
    ConsistencyProof,
    InclusionProof,
    KeyPeriodModel,
    KeyRotation,
    NewToken,
    NodeInfo,
    PrefixCheckResult,
    Session,
    SessionPage,
    StoredToken,
    StoredTokenList,
    UploadResult,
    VerifyReport,
)
from sessions.contract.storage import CreateSessionIn, WrappedKeyModel
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
    audit_origin,
    consistency_proof,
    inclusion_proof,
    new_data_key,
    rewrap,
    root_hash,
    sign_checkpoint,
)
from sessions.processor.audit import AuditRecorder
from sessions.processor.buffers import ChunkBuffers, MemoryBudget
from sessions.processor.config import Settings
from sessions.processor.ingest import ingest, lane_permits, lane_sizes, lane_want
from sessions.processor.integrity import (
    Anchor,
    Finding,
    anchor_or_finding,
    chunk_verdicts,
    extends,
    labels_differ,
    labels_extension,
    manifest_findings,
    open_anchor,
    require_extends,
    resolve_leaves,
    row_fact_findings,
    session_findings,
    sizes_extension,
    verify_report,
)
from sessions.processor.keys import NodeKeys, rotate_signing_key
from sessions.processor.lease import writer_lease
from sessions.processor.readback import (
    ByteRange,
    ChunkReader,
    ReadResources,
    parse_range,
    sample_indexes,
)
from sessions.processor.storage_client import ChunkRow, SessionRow, StorageClient

log = logging.getLogger("lucid.processor")

_SNAPSHOT_ATTEMPTS = 5  # verify's reads, repeated while the session changes under them
_READABLE = (SessionState.RECORDING, SessionState.FINALIZING, SessionState.COMPLETED,
             SessionState.FAILED)
_CACHE = 256
ROTATE_ATTEMPTS = 3  # reads of one session whose key another rotation is changing


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
                 metrics: Metrics, *, holder: str) -> None:
        self.storage, self.keys, self.settings, self.metrics = storage, keys, settings, metrics
        workers = max(1, settings.seal_workers)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lucid-seal")
        # One thread, so digests of a request's chunks are updated in submission order.
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lucid-digest")
        self._writers: set[str] = set()
        self.holder = holder  # this processor, as a holder of sessions' writer leases
        self._buffers: dict[int, ChunkBuffers] = {}
        # Shared by every upload, replay and verify at once: beyond it they wait their turn.
        self.budget = MemoryBudget(settings.memory_budget_mb << 20)
        self._sealers = _Lru()
        self._trees = _Lru()
        self._manifests = _Lru()
        self.audit = AuditRecorder(storage, lambda: self.keys)
        self._rotation = asyncio.Lock()  # one master-key rotation at a time

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

    @asynccontextmanager
    async def _writing(self, sid: str) -> AsyncIterator[int]:
        """Hold the session's writer slot here and its writer lease in storage; yield the
        lease's fencing token, which every write of the block carries.

        The slot refuses a second writer of this process at once (409); the lease, one of
        another processor (409 `upload_in_progress`), and fences this one off once
        another took an expired lease over (409 `lease_lost`).
        """
        with self._writer(sid):
            async with writer_lease(self.storage, sid, holder=self.holder,
                                    ttl=self.settings.lease_seconds) as token:
                yield token

    def _chunk_buffers(self, chunk_size: int) -> ChunkBuffers:
        """Return the reused buffers for chunks of this size (one set per size seen)."""
        buffers = self._buffers.get(chunk_size)
        if buffers is None:
            # Idle buffers are kept as far as the budget allows.
            keep = self.budget.capacity // chunk_size + 1
            buffers = self._buffers[chunk_size] = ChunkBuffers(chunk_size, keep, self.budget)
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

    # -- trust: the kept checkpoint (anchor) and the signed manifest ------------------------

    async def _anchor(self, sid: str) -> Anchor | None:
        """Return the session's last signed checkpoint; MetadataCorrupt if it fails to open."""
        signed = await self.storage.kept_checkpoint(sid)
        if signed is None:
            return None
        try:
            return open_anchor(signed, verifier=self.keys.verifier_of(signed),
                               origin=self.keys.origin(sid))
        except CoreError:
            raise MetadataCorrupt("the session's kept checkpoint fails its signature") from None

    async def _keep_anchor(self, sid: str, tree: CompactRange, *, offset: int, sealed: int,
                           labels_line: str, lease_token: int | None = None) -> None:
        """Sign the tree with the committed sizes and labels; keep it as the new anchor."""
        note = self._sign(sid, tree.size, tree.root(),
                          (sizes_extension(offset, sealed), labels_line))
        await self.storage.keep_checkpoint(sid, note, lease_token=lease_token)

    async def _recording(self, sid: str) -> tuple[Anchor | None, SessionRow]:
        """Return an open session's anchor and its record (no anchor once completed or deleted:
        the manifest rules then).

        If an upload moved the anchor on after the record was read, the record is read
        again, so the anchor is never newer than the record it is compared with.
        """
        row = await self.storage.get_session(sid)
        if row.state in (SessionState.COMPLETED, SessionState.DELETED):
            return None, row
        anchor = await self._anchor(sid)
        if anchor is not None and anchor.size > row.chunk_count:
            row = await self.storage.get_session(sid)
        return anchor, row

    @staticmethod
    def _check_record(row: SessionRow, anchor: Anchor | None) -> None:
        """Raise MetadataCorrupt if an open session's record contradicts its anchor."""
        if anchor is not None and anchor.final:
            raise MetadataCorrupt("the session's record says it is open, but it was finalized",
                                  extra={"state": row.state.value})
        if anchor is not None and anchor.size > row.chunk_count:
            raise MetadataCorrupt(extra={"chunk_count": row.chunk_count,
                                         "signed_size": anchor.size})
        if anchor is not None and anchor.size == row.chunk_count and (
                anchor.plaintext_size, anchor.sealed_size) != (row.offset, _sealed(row)):
            raise MetadataCorrupt("the session's committed sizes differ from the signed ones")
        if labels_differ(row, anchor):
            raise MetadataCorrupt("the session's labels differ from the signed ones")

    async def _tree(self, row: SessionRow, anchor: Anchor | None) -> CompactRange:
        """Return the session's compact range at its committed size, rebuilt if stale.

        A rebuilt tree must extend the anchor (MetadataCorrupt otherwise), so leaf
        rows edited in storage are never signed as a new history.
        """
        self._check_record(row, anchor)
        tree: CompactRange | None = self._trees.get(row.id)
        if tree is None or tree.size != row.chunk_count:
            leaves = await self.storage.leaves(row.id, size=row.chunk_count)
            require_extends(leaves, anchor)
            tree = self._trees.remember(row.id, CompactRange.from_leaf_hashes(leaves))
        return tree

    async def _signed_manifest(self, sid: str, *, cached: bool = True) -> Manifest:
        """Return the session's manifest once its signed checkpoint holds; CoreError if not.

        With `cached`, a manifest this process already verified is reused (a completed
        session's manifest never changes), so a player seeking with many Range requests
        does not re-fetch and re-verify it each time; verify always reads storage anew.
        """
        if cached and (hit := self._manifests.get(sid)) is not None:
            return hit  # type: ignore[no-any-return]
        manifest = Manifest.from_json(await self.storage.manifest(sid))
        manifest.check(verifier=self.keys.verifier_of(manifest.checkpoint),
                       origin=self.keys.origin(sid))
        return self._manifests.remember(sid, manifest)  # type: ignore[no-any-return]

    async def _manifest_or_corrupt(self, sid: str) -> Manifest:
        try:
            return await self._signed_manifest(sid)
        except CoreError:
            raise MetadataCorrupt("the session's manifest fails its signed checkpoint") from None
        except NotFound:
            raise MetadataCorrupt("the session is recorded as completed but has no manifest",
                                  extra={"state": "completed"}) from None

    async def _checked_leaves(self, row: SessionRow, anchor: Anchor | None) -> list[bytes]:
        """Return the session's leaf hashes as signed: the manifest's, or storage's if they
        extend the anchor (MetadataCorrupt otherwise)."""
        if row.state is SessionState.COMPLETED:
            return [c.leaf_hash for c in (await self._manifest_or_corrupt(row.id)).chunks]
        self._check_record(row, anchor)
        leaves = await self.storage.leaves(row.id, size=row.chunk_count)
        require_extends(leaves, anchor)
        return leaves

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

    async def create(self, labels: dict[str, str], retention_days: int | None,
                     upload_length: int | None = None, *,
                     owner: str | None = None) -> Session:
        """Create a recording session; one declared empty (upload_length 0) is finalized at once.

        Its retention defaults to LUCID_RETENTION_DAYS; with one, its data key is wrapped
        under the key-encryption key of the month it expires in (`keys.PeriodKeys`).
        """
        sid = new_session_id()
        if retention_days is None:
            retention_days = self.settings.retention_days
        expires = (None if retention_days is None
                   else datetime.now(UTC) + timedelta(days=retention_days))
        wrapped = self.keys.wrapping_key(expires).wrap(new_data_key(), session_id=sid)
        row = await self.storage.create_session(CreateSessionIn(
            id=sid, labels=labels, retention_days=retention_days,
            wrapped_key=WrappedKeyModel.of(wrapped), chunk_size=self.settings.chunk_size,
            zstd_level=self.settings.zstd_level, format_version=FORMAT_VERSION,
            upload_length=upload_length, owner=owner))
        # Anchored at size 0 before the id is returned: any later chunk row must extend it.
        tree = self._trees.remember(sid, CompactRange())
        await self._keep_anchor(sid, tree, offset=0, sealed=0,
                                labels_line=labels_extension(labels))
        if upload_length == 0:
            return await self.finalize(sid)
        return row.public().model_copy(update={"integrity": "ok"})

    async def set_upload_length(self, sid: str, length: int) -> Session:
        """Declare the session's total length once (the upload that reaches it finalizes).

        A write like an upload: under the session's writer lease, fenced by its token.
        """
        async with self._writing(sid) as token:
            row = await self.storage.set_upload_length(sid, length, lease_token=token)
        return row.public()

    async def get(self, sid: str) -> Session:
        """Return the session as shown to clients, checked against what was signed.

        Completed: root, sizes, labels and parameters are the signed manifest's, and
        `integrity` says whether the stored record agrees.  Recording: `integrity`
        says whether the record agrees with the last signed checkpoint (chunk count,
        plaintext and sealed sizes).  Deleted: `unchecked`.
        """
        row = await self.storage.get_session(sid)
        shown = row.public()
        if row.state is SessionState.DELETED:
            return shown.model_copy(update={"integrity": "unchecked"})
        if row.state is SessionState.COMPLETED:
            try:
                manifest = await self._signed_manifest(sid)
            except (CoreError, NotFound):
                return shown.model_copy(update={"integrity": "mismatch"})
            found = [f for f in manifest_findings(row, [], manifest) if f.index is None]
            return shown.model_copy(update=_signed_fields(manifest) | {
                "integrity": "mismatch" if found else "ok"})
        kept = await self.storage.kept_checkpoint(sid)
        anchor, problem = anchor_or_finding(kept, verifier=self.keys.verifier_of(kept),
                                            origin=self.keys.origin(sid))
        if anchor is not None and anchor.size > row.chunk_count:  # an upload moved it on
            row = await self.storage.get_session(sid)
            shown = row.public()
        try:
            self._check_record(row, anchor)
        except MetadataCorrupt:
            problem = problem or Finding("record")
        if anchor is None and row.chunk_count:
            problem = problem or Finding("checkpoint")
        return shown.model_copy(update={"integrity": "mismatch" if problem else "ok"})

    async def list_sessions(self, params: list[tuple[str, str]]) -> SessionPage:
        return await self.storage.list_sessions(params)

    # -- upload ------------------------------------------------------------------------------

    async def upload(self, sid: str, *, offset: int, source: AsyncIterable[bytes],
                     checksum_header: str | None, content_length: int | None,
                     max_bytes: int) -> UploadResult:
        """Append one request body at `offset`; return the committed offset and chunk count."""
        checksum = None if checksum_header is None else Checksum.parse(checksum_header)
        async with self._writing(sid) as token:
            anchor, row = await self._recording(sid)
            require_state(row.state, SessionState.RECORDING, action="upload to")
            await self._tree(row, anchor)
            if offset != row.offset:
                raise OffsetMismatch(f"Upload-Offset is {offset} but the committed offset is "
                                     f"{row.offset}", extra={"offset": row.offset})
            max_bytes = _within_length(row, content_length, max_bytes)
            parallel, inflight = self.settings.seal_workers, self.settings.inflight_chunks
            want, least = lane_want(row.chunk_size, parallel=parallel, inflight=inflight,
                                    length=content_length)
            lease = await self.budget.lease(want, least=least)
            plain, sealed = lane_sizes(row.chunk_size, length=content_length)
            try:
                done = await ingest(
                    storage=self.storage, sealer=self._sealer(row), session=row, source=source,
                    checksum=checksum, declared_length=content_length, max_bytes=max_bytes,
                    executor=self.executor, hasher=self.hasher,
                    parallel=self.settings.seal_workers, inflight=self.settings.inflight_chunks,
                    on_commit=lambda rows: self._grow_tree(sid, rows),
                    buffers=self._chunk_buffers(row.chunk_size),
                    permits=lane_permits(lease.size, plain=plain, sealed=sealed,
                                         parallel=parallel, inflight=inflight),
                    lease_token=token)
            except BaseException:
                self._trees.pop(sid, None)
                # Still holding the writer slot: no other request of ours is staging now
                # (and the token keeps us from discarding a new lease holder's chunks).
                await asyncio.shield(self._discard_staged(sid, token))
                raise
            finally:
                lease.release()
            if done.chunk_count != row.chunk_count:
                tree = await self._tree(done, anchor)
                # The labels line is carried over: labels never change after creation.
                line = (anchor.labels_line if anchor is not None and anchor.labels_line
                        else labels_extension(row.labels))
                await self._keep_anchor(sid, tree, offset=done.offset, sealed=_sealed(done),
                                        labels_line=line, lease_token=token)
        if done.upload_length is not None and done.offset == done.upload_length:
            await self.finalize(sid)  # the declared length is reached: the upload is complete
        return UploadResult(offset=done.offset, chunk_count=done.chunk_count)

    async def _discard_staged(self, sid: str, token: int) -> None:
        """Drop what a failed request staged but never committed (its sealed bytes are useless)."""
        try:
            discarded = await self.storage.discard_staged(sid, lease_token=token)
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
        committed chunks are read back as replay reads them (rows checked against the signed
        manifest or the last signed checkpoint, leaf hash checked, opened) and hashed here: no
        digest of plaintext is kept anywhere, so a check costs one read-back of the session.
        """
        row, rows = await self._trusted_rows(sid)  # MetadataCorrupt unless signed rows agree
        committed = sum(r.length for r in rows)
        if offset != committed:
            raise OffsetMismatch(f"offset is {offset} but the committed offset is {committed}",
                                 extra={"offset": committed})
        hasher = hashlib.sha256()
        if rows:
            loop = asyncio.get_running_loop()
            async for plain in await self._reader(row, rows).plaintext():
                await loop.run_in_executor(self.hasher, hasher.update, plain)
        return PrefixCheckResult(match=hmac.compare_digest(hasher.digest(), digest),
                                 offset=committed)

    # -- checkpoints and proofs --------------------------------------------------------------

    def _sign(self, sid: str, size: int, root: bytes, extensions: tuple[str, ...] = ()) -> bytes:
        return sign_checkpoint(Checkpoint(origin=self.keys.origin(sid), size=size,
                                          root_hash=root, extensions=extensions),
                               self.keys.signer)

    async def _signed_leaves(self, sid: str, action: str) -> list[bytes]:
        """Return the session's committed leaf hashes, checked against what was signed."""
        anchor, row = await self._recording(sid)
        require_state(row.state, *_READABLE, action=action)
        return await self._checked_leaves(row, anchor)

    async def checkpoint(self, sid: str, size: int | None) -> bytes:
        """Return the signed checkpoint of the session's tree at `size` (default: now).

        Only a tree that extends the session's last signed checkpoint is signed.
        """
        anchor, row = await self._recording(sid)
        require_state(row.state, *_READABLE, action="checkpoint")
        if row.state is SessionState.COMPLETED:
            manifest = await self._manifest_or_corrupt(sid)
            size = _check_size(size, manifest.chunk_count, "size")
            if size == manifest.chunk_count:
                # The final checkpoint, as finalize signed it (it also commits to the manifest).
                return manifest.checkpoint.encode()
            return self._sign(sid, size, root_hash([c.leaf_hash for c in manifest.chunks][:size]))
        size = _check_size(size, row.chunk_count, "size")
        if size == row.chunk_count:
            return self._sign(sid, size, (await self._tree(row, anchor)).root())
        return self._sign(sid, size, root_hash((await self._checked_leaves(row, anchor))[:size]))

    async def inclusion(self, sid: str, index: int, size: int | None) -> InclusionProof:
        leaves = await self._signed_leaves(sid, "prove")
        size = _check_size(size, len(leaves), "size")
        if not 0 <= index < size:
            raise InvalidParameter(f"index must satisfy 0 <= index < size ({size})")
        nodes = LeafHashes(leaves[:size])
        return InclusionProof(
            index=index, size=size, leaf_hash=leaves[index].hex(),
            root_hash=nodes.subtree_hash(0, size).hex(),
            proof=[h.hex() for h in inclusion_proof(index, size=size, nodes=nodes)])

    async def consistency(self, sid: str, old: int, new: int | None) -> ConsistencyProof:
        leaves = await self._signed_leaves(sid, "prove")
        new = _check_size(new, len(leaves), "to")
        if not 0 <= old <= new:
            raise InvalidParameter(f"from must satisfy 0 <= from <= to ({new})")
        leaves = leaves[:new]
        nodes = LeafHashes(leaves)
        return ConsistencyProof(
            from_size=old, to_size=new, from_root=root_hash(leaves[:old]).hex(),
            to_root=root_hash(leaves).hex(),
            proof=[h.hex() for h in consistency_proof(old, new_size=new, nodes=nodes)])

    # -- finalize ----------------------------------------------------------------------------

    async def finalize(self, sid: str) -> Session:
        """Close the session: manifest + final signed checkpoint. Idempotent."""
        async with self._writing(sid) as token:
            anchor, row = await self._recording(sid)
            if row.state is SessionState.COMPLETED:
                return await self.get(sid)
            require_state(row.state, SessionState.RECORDING, SessionState.FINALIZING,
                          action="finalize")
            rows = await self._checked_rows(row, anchor)  # before anything changes
            await self.storage.transition(
                sid, to=SessionState.FINALIZING,
                allowed_from=(SessionState.RECORDING, SessionState.FINALIZING),
                lease_token=token)
            manifest = self._manifest(row, rows)
            done = await self.storage.finalize(sid, root_hash=manifest.root_hash,
                                               checkpoint=manifest.checkpoint,
                                               manifest=manifest.to_json(), lease_token=token)
            return done.public().model_copy(update={"integrity": "ok"})

    async def _checked_rows(self, row: SessionRow, anchor: Anchor | None) -> list[ChunkRow]:
        """Return an open session's chunk rows once they agree with its record and anchor.

        The leaf hashes must extend the anchor and the rows add up to the record;
        a tree this process holds must have the same root (MetadataCorrupt otherwise).
        """
        self._check_record(row, anchor)
        rows = await self.storage.chunks(row.id, count=row.chunk_count)
        leaves = [r.leaf_hash for r in rows]
        require_extends(leaves, anchor)
        if session_findings(row, rows, anchor):
            raise MetadataCorrupt("the session's chunk rows do not add up to its record")
        cached: CompactRange | None = self._trees.get(row.id)
        if cached is not None and cached.size == len(rows) and cached.root() != root_hash(leaves):
            raise MetadataCorrupt("the session's leaf rows changed since they were committed")
        return rows

    def _manifest(self, row: SessionRow, rows: list[ChunkRow]) -> Manifest:
        """Return the signed manifest of these checked rows."""
        root = root_hash([r.leaf_hash for r in rows])
        unsigned = Manifest(
            session_id=row.id, labels=dict(row.labels),
            created_at=row.created_at, plaintext_size=row.offset,
            sealed_size=sum(r.sealed_length for r in rows), chunk_count=len(rows),
            chunk_size=row.chunk_size, zstd_level=row.zstd_level, cipher=CIPHER_NAME,
            format_version=row.format_version,
            chunks=tuple(rows),
            root_hash=root, checkpoint="")
        # The final checkpoint signs the root and, in an extension line, the manifest's
        # contents (labels, times, chunk entries), so neither can be edited unnoticed.
        signed = self._sign(row.id, len(rows), root, (unsigned.checkpoint_extension(),))
        manifest = dataclasses.replace(unsigned, checkpoint=signed.decode("utf-8"))
        manifest.check(verifier=self.keys.verifier, origin=self.keys.origin(row.id))
        return manifest

    async def manifest(self, sid: str) -> bytes:
        """Return the manifest bytes as stored; InvalidState unless the record says completed.

        The signature is the reader's to check (the manifest is what an auditor verifies);
        the whole-record integrity check of `get` is not needed to serve it.
        """
        row = await self.storage.get_session(sid)
        require_state(row.state, SessionState.COMPLETED, action="show the manifest of")
        return await self.storage.manifest(sid)

    # -- read back ---------------------------------------------------------------------------

    async def _trusted_rows(self, sid: str) -> tuple[SessionRow, list[ChunkRow]]:
        """Return the record and the chunk rows to read by: the signed manifest's once
        completed, else storage's once they agree with the anchor (MetadataCorrupt if not)."""
        anchor, row = await self._recording(sid)
        require_state(row.state, *_READABLE, action="replay")
        if row.state is SessionState.COMPLETED:
            return row, list((await self._manifest_or_corrupt(sid)).chunks)
        return row, await self._checked_rows(row, anchor)

    def _reader(self, row: SessionRow, rows: list[ChunkRow]) -> ChunkReader:
        """Return the reader of a session's chunks by these rows (KeyUnavailable if its key
        does not open): its sealer, the buffers of its chunk size, the shared budget."""
        resources = ReadResources(self.executor, max(1, self.settings.seal_workers),
                                  self.settings.prefetch_chunks, self.budget)
        return ChunkReader(self.storage, row.id, rows, sealer=self._sealer(row),
                           buffers=self._chunk_buffers(row.chunk_size), resources=resources)

    async def replay(self, sid: str, range_header: str | None) -> Replay:
        """Return the verified plaintext stream; the first chunk is checked before returning."""
        row, rows = await self._trusted_rows(sid)
        size = sum(r.length for r in rows)
        rng = parse_range(range_header, size=size)
        if size == 0:
            return Replay(rng, 0, _empty())
        counter = self.metrics.bytes_out.labels("processor", "plaintext")
        body = await self._reader(row, rows).plaintext(rng or ByteRange(0, size),
                                                       sent=counter.inc)
        return Replay(rng, size, body)

    async def verify(self, sid: str, sample: float) -> VerifyReport:
        """Return the verify report: chunk damage and metadata damage, each pinpointed.

        Chunk files are checked against the signed tree (the manifest's leaves once
        completed; while recording, the stored leaves once they extend the anchor, or
        else the leaves the chunks' own bytes prove).  Records and chunk rows are
        checked against the manifest or the anchor and the chunks' signed bytes.
        """
        if not 0 < sample <= 100:
            raise InvalidParameter("sample must satisfy 0 < sample <= 100")
        anchor_raw, row, rows, raw = await self._verify_snapshot(sid)
        findings: list[Finding] = []
        manifest: Manifest | None = None
        if raw is not None:
            try:
                manifest = await self._signed_manifest(sid, cached=False)
            except CoreError:
                findings.append(Finding("manifest", None, "fails its signed checkpoint"))
        if row.state is SessionState.COMPLETED and raw is None:
            findings.append(Finding("state", None, "completed, but no manifest is stored"))
        if manifest is not None and row.state is not SessionState.COMPLETED:
            findings.append(Finding("state", None, "a signed manifest exists: it was completed"))
        if manifest is not None:
            report = await self._verify_manifest(row, rows, manifest, sample, findings)
        else:
            report = await self._verify_open(row, rows, anchor_raw, sample, findings)
        if raw is not None and manifest is None:
            report["signature_ok"] = False
        report["ok"] = (not report["bad_chunks"] and not report["metadata_findings"]
                        and report["root_ok"] is not False
                        and report["signature_ok"] is not False)
        return VerifyReport.model_validate(report)

    async def _verify_snapshot(self, sid: str) -> tuple[
            bytes | None, SessionRow, list[ChunkRow], bytes | None]:
        """Read what verify checks (kept checkpoint, record, chunk rows, manifest) as one
        snapshot: the record is read again last, and the reads are repeated while the
        session changed state under them (a finalize landed between them), so a session
        that completes while it is verified is not reported as damaged.  Chunks committed
        meanwhile do not matter: the rows are read up to the count first read."""
        for _ in range(_SNAPSHOT_ATTEMPTS):
            anchor_raw = await self.storage.kept_checkpoint(sid)
            row = await self.storage.get_session(sid)
            require_state(row.state, *_READABLE, action="verify")
            rows = await self.storage.chunks(sid, count=row.chunk_count)
            raw = await self.storage.manifest_or_none(sid)
            again = await self.storage.get_session(sid)
            if (again.state, again.root_hash) == (row.state, row.root_hash):
                return anchor_raw, row, rows, raw
        raise Conflict("the session kept changing while it was verified; verify it again",
                       extra={"state": again.state.value})

    async def _verify_manifest(self, row: SessionRow, rows: list[ChunkRow], manifest: Manifest,
                               sample: float, findings: list[Finding]) -> dict[str, Any]:
        """Verify a completed session against its signed manifest."""
        findings += manifest_findings(row, rows, manifest)
        trusted = [c.leaf_hash for c in manifest.chunks]
        readable = min(manifest.chunk_count, row.chunk_count)  # storage serves no more
        indexes = sample_indexes(readable, sample)
        facts = await self._reader(row, list(manifest.chunks)).examine(indexes)
        bad = chunk_verdicts(facts, trusted)
        root_ok: bool | None = None
        if len(indexes) == manifest.chunk_count:
            rebuilt = [facts[i].leaf for i in indexes]
            root_ok = all(h is not None and len(h) == 32 for h in rebuilt) and root_hash(
                [h or b"" for h in rebuilt]) == manifest.root_hash
        return verify_report(row, manifest.chunk_count, indexes, root_ok, True, bad, findings)

    async def _verify_open(self, row: SessionRow, rows: list[ChunkRow], anchor_raw: bytes | None,
                           sample: float, findings: list[Finding]) -> dict[str, Any]:
        """Verify a session without a manifest against its anchor and its chunks' bytes."""
        anchor, problem = anchor_or_finding(anchor_raw, verifier=self.keys.verifier_of(anchor_raw),
                                            origin=self.keys.origin(row.id))
        findings += [problem] if problem else []
        if anchor is None and problem is None and rows:
            findings.append(Finding("checkpoint", None, "no signed checkpoint is kept"))
        if anchor is not None and anchor.final:
            findings.append(Finding("state", None, "its kept checkpoint is a final one"))
        findings += session_findings(row, rows, anchor)
        leaves = [r.leaf_hash for r in rows]
        indexes = sample_indexes(len(rows), sample)
        facts = await self._reader(row, rows).examine(indexes)
        trusted, anchored = leaves, anchor is None or extends(leaves, anchor)
        hidden = anchor is not None and anchor.size > len(leaves)  # a chunk_count finding
        if anchor is not None and not anchored and not hidden:
            resolved = resolve_leaves(leaves, anchor, facts)
            if resolved is not None:
                (trusted, named), anchored = resolved, True
                findings += named
            else:
                findings.append(Finding("leaf_hash", None, "the stored leaf hashes do not extend "
                                        "the signed checkpoint" + (
                                            "; verify every chunk to name the rows"
                                            if len(indexes) < len(rows) else "")))
        findings += row_fact_findings(rows, facts, trusted)
        bad = chunk_verdicts(facts, trusted)
        root_ok: bool | None = None
        if len(indexes) == len(rows) and not hidden:
            root_ok = anchored and not any(b["reason"] != "unopenable" for b in bad)
        signature_ok = None if anchor is None and problem is None else problem is None
        return verify_report(row, len(rows), indexes, root_ok, signature_ok, bad, findings)

    # -- delete ------------------------------------------------------------------------------

    async def delete(self, sid: str) -> None:
        """Crypto-erase then remove the session (storage does both, in that order)."""
        await self.storage.delete(sid)
        self._sealers.pop(sid, None)
        self._trees.pop(sid, None)
        self._manifests.pop(sid, None)

    async def set_hold(self, sid: str, hold: bool) -> Session:
        """Set or release the session's legal hold; return the session.  Idempotent.

        A held session's data key is rewrapped under the master key, so destroying its
        retention period's key does not erase it; a released one goes back under the key
        of the period it expires in (or, once that is past, the current period's).
        Raises InvalidState if the session's key was erased, KeyUnavailable if it does not open.
        """
        row = await self.storage.get_session(sid)
        wrapped = row.wrapped_key
        if wrapped is None:
            raise InvalidState("the session's key was erased", extra={"state": row.state.value})
        if row.legal_hold == hold:
            return row.public()
        try:
            data_key = self.keys.unwrap(wrapped, session_id=sid)
        except UnwrapError:
            raise KeyUnavailable() from None
        target = self.keys.master if hold else self.keys.wrapping_key(_release_expiry(row))
        done = await self.storage.set_hold(sid, hold=hold, expected_key_id=wrapped.key_id,
                                           wrapped=target.wrap(data_key, session_id=sid))
        return done.public()

    async def rotate_keys(self) -> KeyRotation:
        """Rewrap every stored session key under the current master key; chunks are untouched.

        Keys wrapped under a previous master key (LUCID_PREVIOUS_MASTER_KEY_FILES) are
        rewrapped with a compare-and-set on their key id; once none is left, the previous
        key files can be destroyed.  Idempotent, and safe beside another rotation (one
        whose caller went away keeps running): a key that changed under it is read again.
        """
        async with self._rotation:
            counts = {"rotated": 0, "already_current": 0, "erased": 0, "period_wrapped": 0}
            unknown: set[str] = set()
            unreadable: list[str] = []  # damaged wrapped keys: reported, left as they are
            async for row in self.storage.all_sessions():
                for _ in range(ROTATE_ATTEMPTS):
                    try:
                        outcome = await self._rotate_one(row)
                        break
                    except (Conflict, InvalidState):  # rewrapped or erased meanwhile: look again
                        row = await self.storage.get_session(row.id)
                else:
                    raise Conflict("a session's key kept changing during the rotation; retry")
                if outcome in counts:
                    counts[outcome] += 1
                elif outcome == "unreadable":
                    unreadable.append(row.id)
                else:
                    unknown.add(outcome)
        if unreadable:
            log.warning("key rotation: %d session key(s) are malformed or do not open under "
                        "their master key; left as they are (first: %s)",
                        len(unreadable), unreadable[0])
        return KeyRotation(master_key_id=self.keys.master.key_id, rotated=counts["rotated"],
                           already_current=counts["already_current"], erased=counts["erased"],
                           period_wrapped=counts["period_wrapped"],
                           unknown_key_ids=sorted(unknown), unreadable_session_ids=unreadable)

    async def _rotate_one(self, row: SessionRow) -> str:
        """Rewrap one session's key if it is under a previous master key; return what was
        found: a KeyRotation count's name, "unreadable", or an unknown master key id.
        Raises Conflict if the stored key changed since `row` was read."""
        current = self.keys.master
        try:
            wrapped = row.wrapped_key
        except UnwrapError:
            return "unreadable"
        if wrapped is None:
            return "erased"
        if wrapped.key_id == current.key_id:
            return "already_current"
        if self.keys.periods is not None and self.keys.periods.get(wrapped.key_id):
            return "period_wrapped"  # under its retention period's key, not a master
        try:
            old = self.keys.master_for(wrapped.key_id)
        except UnwrapError:
            return wrapped.key_id
        try:
            new = rewrap(wrapped, session_id=row.id, old=old, new=current)
        except UnwrapError:
            return "unreadable"
        await self.storage.replace_wrapped_key(row.id, expected_key_id=wrapped.key_id,
                                               wrapped=new)
        return "rotated"

    def rotate_signing_key(self, compromised_after: str | None) -> NodeInfo:
        """Swap in a fresh signing key; every old one stays in the published history."""
        self.keys = rotate_signing_key(self.settings, self.keys,
                                       compromised_after=compromised_after)
        return self.node()

    def node(self) -> NodeInfo:
        return NodeInfo(key_name=self.keys.signer.name,
                        verifier_key=self.keys.verifier.key_text(),
                        origin_prefix=f"{self.keys.signer.name}/sessions/",
                        audit_origin=audit_origin(self.keys.signer.name),
                        key_history=[KeyPeriodModel.model_validate(p.to_json())
                                     for p in self.keys.history],
                        chunk_size=self.settings.chunk_size)

    # -- records relayed to storage: API tokens, the audit log, sealed chunks ----------------

    async def store_token(self, token: NewToken) -> StoredToken:
        """Store a token the gateway made (only the hash of its secret); Conflict if its id is
        taken."""
        return await self.storage.create_token(token)

    async def stored_tokens(self) -> StoredTokenList:
        return await self.storage.list_tokens()

    async def stored_token(self, token_id: str) -> StoredToken:
        """Return the stored token of that id; NotFound if there is none."""
        return await self.storage.get_token(token_id)

    async def revoke_token(self, token_id: str) -> StoredToken:
        """Revoke the token (idempotent); NotFound if there is none."""
        return await self.storage.revoke_token(token_id)

    async def audit_page(self, *, start: int, limit: int, session_id: str | None) -> AuditPage:
        """Return the audit entries from `start` (of one session if given), one page."""
        params = {"start": str(start), "limit": str(limit)}
        if session_id is not None:
            params["session_id"] = session_id
        return await self.storage.audit_page(params)

    async def audit_checkpoint(self) -> bytes | None:
        """Return the audit log's signed head, None before its first entry."""
        return await self.storage.audit_checkpoint()

    async def sealed_chunk(self, sid: str, index: int) -> bytes:
        """Return chunk `index` as stored (sealed: the reader verifies it), counted as sent."""
        data = await self.storage.get_chunk(sid, index)
        self.metrics.bytes_out.labels("processor", "sealed").inc(len(data))
        return data


def _within_length(row: SessionRow, content_length: int | None, max_bytes: int) -> int:
    """Return the most bytes this request may carry; raise PayloadTooLarge past the length.

    Precondition: row.offset + content_length <= row.upload_length when both are known.
    """
    if row.upload_length is None:
        return max_bytes
    room = row.upload_length - row.offset
    if content_length is not None and content_length > room:
        raise PayloadTooLarge(f"the session's declared length is {row.upload_length} bytes; "
                              f"{room} remain", extra={"offset": row.offset,
                                                       "upload_length": row.upload_length})
    return min(max_bytes, room)


def _release_expiry(row: SessionRow) -> datetime | None:
    """Return when a released session expires for its key's period: never (None), its
    expiry, or now if that is past (its own period's key may be destroyed already)."""
    text = row.expires_at
    if not text:
        return None
    return max(datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
               datetime.now(UTC))


def _sealed(row: SessionRow) -> int:
    return row.sealed_bytes


def _signed_fields(manifest: Manifest) -> dict[str, Any]:
    """Return the Session fields a completed session shows from its signed manifest."""
    return {"root_hash": manifest.root_hash.hex(), "chunk_count": manifest.chunk_count,
            "offset": manifest.plaintext_size, "sealed_bytes": manifest.sealed_size,
            "labels": dict(manifest.labels), "created_at": manifest.created_at,
            "chunk_size": manifest.chunk_size, "zstd_level": manifest.zstd_level,
            "format_version": manifest.format_version}


def _check_size(size: int | None, committed: int, name: str) -> int:
    if size is None:
        return committed
    if not 0 <= size <= committed:
        raise InvalidParameter(f"{name} must satisfy 0 <= {name} <= {committed} (chunks committed)")
    return size


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""
