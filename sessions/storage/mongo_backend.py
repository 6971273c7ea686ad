"""The MongoDB metadata backend, on PyMongo's native asyncio API (`AsyncMongoClient`).

Not Motor: Motor is deprecated in favour of this API.  Documents:

    sessions  {_id: session id, state, created_at, ..., labels: ["key=value", ...],
               key_id, key_blob, revision, checkpoint, manifest}
    chunks    {s: session id, i: index, offset, length, sealed_length, leaf_hash, compressed}
    tokens    {_id: token id, name, role, secret_hash, created_at, expires_at, revoked_at,
               created_by}
    meta      {_id: "schema", version}, {_id: "audit_head", size, checkpoint}
    audit     {_id: seq, at, action, actor, client, session, detail, prev}  (schema 4)

Every write is `w: majority, j: true`; retryable writes and reads are on.  The
compare-and-set is an `update_one` filtered on (_id, revision); a commit inserts
its chunks in the same transaction as that update, so MongoDB must run as a
replica set (one node is enough).  Paging matches SQLite's: `_id` descending
(binary string order, as SQLite's BINARY collation), next page `_id < cursor`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from sessions.common.secrets import ConfigError
from sessions.common.states import SessionState
from sessions.core import AuditEntry
from sessions.storage.dburl import MetadataUrl
from sessions.storage.errors import StorageUnavailable
from sessions.storage.records import (
    ChunkRecord,
    Finalized,
    SessionRecord,
    TokenRecord,
    Update,
    WrappedKey,
)

log = logging.getLogger("lucid.storage.mongo")
Doc = dict[str, Any]
Label = tuple[str, str]
SCHEMA_VERSION = 5
DURABLE = WriteConcern(w="majority", j=True)
SELECTION_TIMEOUT_MS = 5000


def _v1_indexes() -> dict[str, list[IndexModel]]:
    return {
        "sessions": [
            IndexModel([("state", ASCENDING), ("_id", DESCENDING)], name="by_state"),
            IndexModel([("labels", ASCENDING), ("_id", DESCENDING)], name="by_label"),
            IndexModel([("created_at", ASCENDING)], name="by_created"),
            # what a retention sweep asks: sessions of a state created before a time
            IndexModel([("state", ASCENDING), ("created_at", ASCENDING)],
                       name="by_state_created"),
        ],
        "chunks": [IndexModel([("s", ASCENDING), ("i", ASCENDING)], unique=True,
                              name="session_index")],
    }


def _v2_indexes() -> dict[str, list[IndexModel]]:
    """v2: API tokens (`_id` is the token id, unique); listed in creation order."""
    return {"tokens": [IndexModel([("created_at", ASCENDING), ("_id", ASCENDING)],
                                  name="by_created")]}


def _v3_indexes() -> dict[str, list[IndexModel]]:
    """v3: the retention sweep's questions: expiry (live sessions only), idle, key usage."""
    return {
        "sessions": [
            # Plain, not partial: SecantusDB plans no partial index.  A string range
            # ($lte a time) never matches the null of an erased session (type bracketing).
            IndexModel([("legal_hold", ASCENDING), ("expires_at", ASCENDING)],
                       name="by_expiry"),
            IndexModel([("state", ASCENDING), ("updated_at", ASCENDING)],
                       name="by_state_updated"),
            IndexModel([("key_id", ASCENDING)], name="by_key_id"),
        ],
    }


def _v4_indexes() -> dict[str, list[IndexModel]]:
    """v4: the audit log; `_id` is the sequence number (unique: appends never fork the chain)."""
    return {"audit": [IndexModel([("session", ASCENDING), ("_id", ASCENDING)],
                                 name="by_session")]}


def _v5_indexes() -> dict[str, list[IndexModel]]:
    """v5: a session's writer lease (lease_token, lease_holder, lease_expires) lives in its
    document and changes only through the revision compare-and-set: no index.  Documents
    from before read as never leased (token 0)."""
    return {}


# MIGRATIONS[v] takes a database from schema v - 1 to v; each step is idempotent.
MIGRATIONS = {1: _v1_indexes, 2: _v2_indexes, 3: _v3_indexes, 4: _v4_indexes,
              5: _v5_indexes}


class MongoBackend:
    """`MetadataBackend` on one MongoDB database (the URL's path)."""

    def __init__(self, url: MetadataUrl) -> None:
        self.url = url
        options: Doc = {"retryWrites": True, "retryReads": True, "w": "majority",
                        "journal": True, "appname": "lucid-storage"}
        if "serverselectiontimeoutms" not in url.url.lower():
            options["serverSelectionTimeoutMS"] = SELECTION_TIMEOUT_MS
        try:
            self._client: AsyncMongoClient[Doc] = AsyncMongoClient(url.url, **options)
        except (PyMongoError, ValueError) as exc:  # its message may quote the URL: name the type
            raise ConfigError(f"LUCID_METADATA_URL {url.redacted} is not usable "
                              f"({type(exc).__name__})") from None
        db = self._client.get_database(url.database, write_concern=DURABLE,
                                       read_concern=ReadConcern("majority"))
        self._sessions: AsyncCollection[Doc] = db["sessions"]
        self._chunks: AsyncCollection[Doc] = db["chunks"]
        self._meta: AsyncCollection[Doc] = db["meta"]
        self._tokens: AsyncCollection[Doc] = db["tokens"]
        self._audit: AsyncCollection[Doc] = db["audit"]

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """The one place driver errors become StorageUnavailable (type logged, never the URL)."""
        try:
            yield
        except PyMongoError as exc:
            log.warning("metadata database error: %s", type(exc).__name__)
            raise StorageUnavailable() from exc

    async def prepare(self) -> None:
        """Bring the database to SCHEMA_VERSION (indexes included); refuse a newer schema."""
        async with self._guard():
            doc = await self._meta.find_one({"_id": "schema"})
            version = 0 if doc is None else int(doc["version"])
            if version > SCHEMA_VERSION:
                raise ConfigError(f"the metadata database has schema {version}; this version "
                                  f"of lucid-sessions understands up to {SCHEMA_VERSION}")
            for step in range(1, SCHEMA_VERSION + 1):  # index creation is idempotent: rerun all
                for name, indexes in MIGRATIONS[step]().items():
                    await self._meta.database[name].create_indexes(indexes)
            if version < 3:
                await self._backfill_expiry()
            if version < SCHEMA_VERSION:
                await self._meta.update_one({"_id": "schema"},
                                            {"$set": {"version": SCHEMA_VERSION}}, upsert=True)

    async def _backfill_expiry(self) -> None:
        """Give schema-1 sessions no hold, and those with a retention their expires_at."""
        await self._sessions.update_many({"legal_hold": {"$exists": False}},
                                         {"$set": {"legal_hold": False}})
        found = self._sessions.find({"retention_days": {"$type": "number"},
                                     "expires_at": {"$exists": False},
                                     "state": {"$ne": SessionState.DELETED.value}},
                                    projection={"created_at": 1, "retention_days": 1})
        async for doc in found:
            await self._sessions.update_one({"_id": doc["_id"]}, {"$set": {
                "expires_at": _plus_days(doc["created_at"], int(doc["retention_days"]))}})

    async def insert_session(self, rec: SessionRecord) -> bool:
        async with self._guard():
            try:
                await self._sessions.insert_one({"_id": rec.id, **_session_fields(rec)})
            except DuplicateKeyError:
                return False
        return True

    async def load_session(self, session_id: str) -> SessionRecord | None:
        async with self._guard():
            doc = await self._sessions.find_one({"_id": session_id},
                                                projection={"checkpoint": 0, "manifest": 0})
        return None if doc is None else _record(doc)

    async def apply(self, update: Update) -> bool:
        rec = update.session
        changes = _session_fields(rec)
        del changes["labels"], changes["created_at"], changes["owner"]  # set once, at creation
        if update.finalized is not None:
            changes.update(checkpoint=update.finalized.checkpoint,
                           manifest=update.finalized.manifest)
        if update.checkpoint is not None:
            changes["checkpoint"] = update.checkpoint
        match = {"_id": rec.id, "revision": rec.revision - 1}
        async with self._guard():
            if not update.chunks:
                done = await self._sessions.update_one(match, {"$set": changes})
                return done.matched_count == 1

            async def commit(s: AsyncClientSession) -> bool:
                done = await self._sessions.update_one(match, {"$set": changes}, session=s)
                if done.matched_count != 1:
                    return False
                await self._chunks.insert_many(
                    [_chunk_doc(rec.id, c) for c in update.chunks], session=s)
                return True

            async with self._client.start_session() as session:
                return await session.with_transaction(commit, write_concern=DURABLE)

    async def list_sessions(self, *, state: SessionState | None, labels: Sequence[Label],
                            cursor: str | None, limit: int) -> list[SessionRecord]:
        query: Doc = {}
        if state is not None:
            query["state"] = state.value
        if cursor is not None:
            query["_id"] = {"$lt": cursor}
        if labels:
            query["labels"] = {"$all": [f"{k}={v}" for k, v in labels]}
        async with self._guard():
            found = self._sessions.find(query, projection={"checkpoint": 0, "manifest": 0})
            docs = await found.sort("_id", DESCENDING).limit(limit).to_list()
        return [_record(d) for d in docs]

    async def list_chunks(self, session_id: str, *, start: int, stop: int,
                          limit: int) -> list[ChunkRecord]:
        async with self._guard():
            found = self._chunks.find({"s": session_id, "i": {"$gte": start, "$lt": stop}})
            docs = await found.sort("i", ASCENDING).limit(limit).to_list()
        return [ChunkRecord(index=d["i"], offset=d["offset"], length=d["length"],
                            sealed_length=d["sealed_length"], leaf_hash=bytes(d["leaf_hash"]),
                            compressed=bool(d["compressed"])) for d in docs]

    async def leaf_hashes(self, session_id: str, *, count: int) -> bytes:
        out = bytearray()
        async with self._guard():
            found = self._chunks.find({"s": session_id, "i": {"$lt": count}},
                                      projection={"_id": 0, "leaf_hash": 1})
            async for doc in found.sort("i", ASCENDING):
                out += doc["leaf_hash"]
        return bytes(out)

    async def load_finalized(self, session_id: str) -> Finalized | None:
        async with self._guard():
            doc = await self._sessions.find_one({"_id": session_id},
                                                projection={"checkpoint": 1, "manifest": 1})
        if doc is None or doc.get("manifest") is None:
            return None
        return Finalized(checkpoint=doc["checkpoint"], manifest=bytes(doc["manifest"]))

    async def load_checkpoint(self, session_id: str) -> str | None:
        async with self._guard():
            doc = await self._sessions.find_one({"_id": session_id},
                                                projection={"checkpoint": 1})
        return None if doc is None or doc.get("checkpoint") is None else str(doc["checkpoint"])

    async def count_by_state(self) -> dict[str, int]:
        async with self._guard():
            found = await self._sessions.aggregate(
                [{"$group": {"_id": "$state", "n": {"$sum": 1}}}])
            return {d["_id"]: int(d["n"]) async for d in found}

    async def insert_token(self, rec: TokenRecord) -> bool:
        doc = {"_id": rec.id, "name": rec.name, "role": rec.role, "secret_hash": rec.secret_hash,
               "created_at": rec.created_at, "expires_at": rec.expires_at,
               "revoked_at": rec.revoked_at, "created_by": rec.created_by}
        async with self._guard():
            try:
                await self._tokens.insert_one(doc)
            except DuplicateKeyError:
                return False
        return True

    async def append_audit(self, entry: AuditEntry, checkpoint: str) -> bool:
        doc = entry.to_json()
        doc["_id"] = doc.pop("seq")
        doc["prev"] = entry.prev

        async def append(s: AsyncClientSession) -> None:
            await self._audit.insert_one(doc, session=s)
            await self._meta.update_one(
                {"_id": "audit_head"},
                {"$set": {"size": entry.seq + 1, "checkpoint": checkpoint}}, upsert=True,
                session=s)

        async with self._guard():
            try:
                async with self._client.start_session() as session:
                    await session.with_transaction(append, write_concern=DURABLE)
            except DuplicateKeyError:
                return False
        return True

    async def load_token(self, token_id: str) -> TokenRecord | None:
        async with self._guard():
            doc = await self._tokens.find_one({"_id": token_id})
        return None if doc is None else _token(doc)

    async def list_tokens(self) -> list[TokenRecord]:
        async with self._guard():
            found = self._tokens.find({}).sort([("created_at", ASCENDING), ("_id", ASCENDING)])
            return [_token(d) async for d in found]

    async def revoke_token(self, token_id: str, *, at: str) -> bool:
        async with self._guard():
            done = await self._tokens.update_one({"_id": token_id, "revoked_at": None},
                                                 {"$set": {"revoked_at": at}})
        return done.modified_count == 1

    async def list_expired(self, *, before: str, limit: int) -> list[SessionRecord]:
        query = {"legal_hold": False, "expires_at": {"$lte": before}}
        return await self._find(query, "expires_at", limit)

    async def list_idle(self, *, state: SessionState, before: str,
                        limit: int) -> list[SessionRecord]:
        return await self._find({"state": state.value, "updated_at": {"$lt": before}},
                                "updated_at", limit)

    async def _find(self, query: Doc, order: str, limit: int) -> list[SessionRecord]:
        async with self._guard():
            found = self._sessions.find(query, projection={"checkpoint": 0, "manifest": 0})
            docs = await found.sort(order, ASCENDING).limit(limit).to_list()
        return [_record(d) for d in docs]

    async def key_usage(self) -> dict[str, int]:
        async with self._guard():
            found = await self._sessions.aggregate([
                {"$match": {"key_id": {"$gt": ""}}},  # strings only: erased keys are null
                {"$group": {"_id": "$key_id", "n": {"$sum": 1}}}])
            return {str(d["_id"]): int(d["n"]) async for d in found}

    async def list_audit(self, *, start: int, session_id: str | None,
                         limit: int) -> list[AuditEntry]:
        query: Doc = {"_id": {"$gte": start}}
        if session_id is not None:
            query["session"] = session_id
        async with self._guard():
            docs = await self._audit.find(query).sort("_id", ASCENDING).limit(limit).to_list()
        return [_audit_entry(d) for d in docs]

    async def last_audit(self) -> AuditEntry | None:
        async with self._guard():
            docs = await self._audit.find({}).sort("_id", DESCENDING).limit(1).to_list()
        return _audit_entry(docs[0]) if docs else None

    async def load_audit_checkpoint(self) -> tuple[int, str] | None:
        async with self._guard():
            doc = await self._meta.find_one({"_id": "audit_head"})
        return None if doc is None else (int(doc["size"]), str(doc["checkpoint"]))

    async def ping(self) -> None:
        async with self._guard():
            await self._client.admin.command("ping")

    async def close(self) -> None:
        await self._client.close()


def _session_fields(rec: SessionRecord) -> Doc:
    key = rec.wrapped_key
    return {
        "state": rec.state.value, "created_at": rec.created_at, "updated_at": rec.updated_at,
        "retention_days": rec.retention_days, "offset": rec.offset,
        "chunk_count": rec.chunk_count, "sealed_bytes": rec.sealed_bytes,
        "chunk_size": rec.chunk_size, "zstd_level": rec.zstd_level,
        "format_version": rec.format_version, "root_hash": rec.root_hash,
        "key_id": None if key is None else key.key_id,
        "key_blob": None if key is None else key.blob,
        "upload_length": rec.upload_length, "revision": rec.revision,
        "labels": [f"{k}={v}" for k, v in rec.labels.items()], "owner": rec.owner,
        "legal_hold": rec.legal_hold, "expires_at": rec.expires_at,
        "lease_token": rec.lease_token, "lease_holder": rec.lease_holder,
        "lease_expires": rec.lease_expires,
    }


def _chunk_doc(session_id: str, c: ChunkRecord) -> Doc:
    return {"s": session_id, "i": c.index, "offset": c.offset, "length": c.length,
            "sealed_length": c.sealed_length, "leaf_hash": c.leaf_hash,
            "compressed": c.compressed}


def _record(doc: Doc) -> SessionRecord:
    key = (None if doc["key_id"] is None
           else WrappedKey(key_id=doc["key_id"], blob=bytes(doc["key_blob"])))
    return SessionRecord(
        id=doc["_id"], state=SessionState(doc["state"]),
        labels=dict(pair.split("=", 1) for pair in doc["labels"]),
        created_at=doc["created_at"], updated_at=doc["updated_at"],
        retention_days=doc["retention_days"], offset=doc["offset"],
        chunk_count=doc["chunk_count"], sealed_bytes=doc["sealed_bytes"],
        chunk_size=doc["chunk_size"], zstd_level=doc["zstd_level"],
        format_version=doc["format_version"],
        root_hash=None if doc["root_hash"] is None else bytes(doc["root_hash"]),
        wrapped_key=key, upload_length=doc["upload_length"], revision=doc["revision"],
        owner=doc.get("owner"),
        legal_hold=bool(doc.get("legal_hold", False)), expires_at=doc.get("expires_at"),
        lease_token=int(doc.get("lease_token", 0)), lease_holder=doc.get("lease_holder"),
        lease_expires=doc.get("lease_expires"))


def _token(doc: Doc) -> TokenRecord:
    return TokenRecord(id=doc["_id"], name=doc["name"], role=doc["role"],
                       secret_hash=bytes(doc["secret_hash"]), created_at=doc["created_at"],
                       expires_at=doc["expires_at"], revoked_at=doc["revoked_at"],
                       created_by=doc["created_by"])


def _plus_days(created_at: str, days: int) -> str:
    """Return the RFC 3339 text of created_at + days, in the form `rfc3339` writes."""
    moment = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (moment + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _audit_entry(doc: Doc) -> AuditEntry:
    return AuditEntry(seq=doc["_id"], at=doc["at"], action=doc["action"], actor=doc["actor"],
                      client=doc["client"], session_id=doc["session"],
                      detail=doc["detail"], prev=bytes(doc["prev"]))
