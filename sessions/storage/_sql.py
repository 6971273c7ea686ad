"""The SQLite schema, its migrations and every statement `SqliteBackend` runs.

Statements are constants; the only SQL built at run time joins constant
fragments, and every value is a bound parameter.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sessions.common.secrets import ConfigError

SCHEMA_VERSION = 4

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",  # an acknowledged write survives power loss
    "PRAGMA foreign_keys = ON",
    "PRAGMA secure_delete = ON",  # an erased wrapped key is zeroed, not left in a free page
    "PRAGMA busy_timeout = 10000",
)

_V1 = (
    """CREATE TABLE sessions (
        id TEXT PRIMARY KEY NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('recording', 'finalizing', 'completed', 'failed', 'deleted')),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        retention_days INTEGER,
        plain_offset INTEGER NOT NULL DEFAULT 0 CHECK (plain_offset >= 0),
        chunk_count INTEGER NOT NULL DEFAULT 0 CHECK (chunk_count >= 0),
        sealed_bytes INTEGER NOT NULL DEFAULT 0 CHECK (sealed_bytes >= 0),
        chunk_size INTEGER NOT NULL,
        zstd_level INTEGER NOT NULL,
        format_version INTEGER NOT NULL,
        root_hash BLOB,
        checkpoint TEXT,
        manifest BLOB,
        key_id TEXT,
        key_blob BLOB
    ) WITHOUT ROWID""",
    "CREATE INDEX sessions_by_state ON sessions (state, id)",
    """CREATE TABLE chunks (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        idx INTEGER NOT NULL CHECK (idx >= 0),
        plain_offset INTEGER NOT NULL CHECK (plain_offset >= 0),
        length INTEGER NOT NULL CHECK (length > 0),
        sealed_length INTEGER NOT NULL CHECK (sealed_length > 0),
        leaf_hash BLOB NOT NULL CHECK (length(leaf_hash) = 32),
        compressed INTEGER NOT NULL CHECK (compressed IN (0, 1)),
        PRIMARY KEY (session_id, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE session_labels (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (session_id, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX session_labels_by_value ON session_labels (key, value, session_id)",
)

# v2: the total length a client declared (tus `Upload-Length`); NULL while unknown.
_V2 = (
    "ALTER TABLE sessions ADD COLUMN upload_length INTEGER "
    "CHECK (upload_length IS NULL OR upload_length >= 0)",
)

# v3: a revision per record for the rules layer's compare-and-set; created time for retention.
_V3 = (
    "ALTER TABLE sessions ADD COLUMN revision INTEGER NOT NULL DEFAULT 1",
    "CREATE INDEX sessions_by_created ON sessions (created_at)",
)

# v4: the hash-chained audit log and its signed head.  Triggers refuse edits and deletes
# through SQL (whoever holds the file can drop them: `audit verify` is what detects that).
_V4 = (
    """CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY NOT NULL CHECK (seq >= 0),
        at TEXT NOT NULL,
        action TEXT NOT NULL,
        actor TEXT NOT NULL,
        client TEXT NOT NULL,
        session_id TEXT,
        detail TEXT NOT NULL,
        prev BLOB NOT NULL CHECK (length(prev) = 32)
    )""",
    "CREATE INDEX audit_by_session ON audit_log (session_id, seq)",
    """CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        size INTEGER NOT NULL CHECK (size >= 0),
        checkpoint TEXT NOT NULL
    )""",
    """CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
)

# MIGRATIONS[v] takes a database from schema v - 1 to schema v.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4}


def migrate(db: sqlite3.Connection) -> None:
    """Bring db to SCHEMA_VERSION, one transaction per step; refuse a newer schema."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ConfigError(f"the metadata database has schema {version}; this version of "
                          f"lucid-sessions understands up to {SCHEMA_VERSION}")
    for step in range(version + 1, SCHEMA_VERSION + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[step]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(step)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def truncate_wal(db: sqlite3.Connection) -> None:
    """Checkpoint and empty the WAL so an erased key's old page image does not linger there."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


_SESSION_COLUMNS = ("SELECT id, state, created_at, updated_at, retention_days, plain_offset, "
                    "chunk_count, sealed_bytes, chunk_size, zstd_level, format_version, "
                    "root_hash, key_id, key_blob, upload_length, revision FROM sessions")
SELECT_SESSION_BY_ID = _SESSION_COLUMNS + " WHERE id = ?"
INSERT_SESSION = ("INSERT OR IGNORE INTO sessions (id, state, created_at, updated_at, "
                  "retention_days, chunk_size, zstd_level, format_version, key_id, key_blob, "
                  "upload_length, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_LABEL = "INSERT INTO session_labels (session_id, key, value) VALUES (?, ?, ?)"
# The one compare-and-set: every field the rules may change, if the revision is the one read.
UPDATE_SESSION = ("UPDATE sessions SET state = ?, updated_at = ?, plain_offset = ?, "
                  "chunk_count = ?, sealed_bytes = ?, root_hash = ?, key_id = ?, key_blob = ?, "
                  "upload_length = ?, revision = ? WHERE id = ? AND revision = ?")
SET_FINALIZED = "UPDATE sessions SET checkpoint = ?, manifest = ? WHERE id = ?"
# The processor's last signed checkpoint of a session (the `checkpoint` column; finalize
# overwrites it with the final one).
SET_CHECKPOINT = "UPDATE sessions SET checkpoint = ? WHERE id = ?"
SELECT_CHECKPOINT = "SELECT checkpoint FROM sessions WHERE id = ?"
INSERT_CHUNK = ("INSERT INTO chunks (session_id, idx, plain_offset, length, sealed_length, "
                "leaf_hash, compressed) VALUES (?, ?, ?, ?, ?, ?, ?)")
SELECT_CHUNKS = ("SELECT idx, plain_offset, length, sealed_length, leaf_hash, compressed "
                 "FROM chunks WHERE session_id = ? AND idx >= ? AND idx < ? ORDER BY idx LIMIT ?")
SELECT_LEAVES = "SELECT leaf_hash FROM chunks WHERE session_id = ? AND idx < ? ORDER BY idx"
SELECT_FINALIZED = "SELECT checkpoint, manifest FROM sessions WHERE id = ?"
COUNT_BY_STATE = "SELECT state, count(*) FROM sessions GROUP BY state"

_LABEL_FILTER = ("EXISTS (SELECT 1 FROM session_labels AS l "
                 "WHERE l.session_id = sessions.id AND l.key = ? AND l.value = ?)")


def list_sessions_query(*, state: str | None, labels: Sequence[tuple[str, str]],
                        cursor: str | None) -> tuple[str, list[object]]:
    """Return the newest-first listing query (its LIMIT still to bind) and its parameters."""
    where: list[str] = []
    params: list[object] = []
    if state is not None:
        where.append("state = ?")
        params.append(state)
    if cursor is not None:
        where.append("id < ?")
        params.append(cursor)
    for key, value in labels:
        where.append(_LABEL_FILTER)
        params.extend((key, value))
    clause = " WHERE " + " AND ".join(where) if where else ""
    return _SESSION_COLUMNS + clause + " ORDER BY id DESC LIMIT ?", params


def select_labels_query(count: int) -> str:
    """Return the query for the labels of `count` sessions, one `?` per id."""
    marks = ", ".join("?" * count)  # only placeholders are interpolated
    return f"SELECT session_id, key, value FROM session_labels WHERE session_id IN ({marks})"  # noqa: S608


# -- the audit log (schema v4) -------------------------------------------------------------
INSERT_AUDIT = ("INSERT OR IGNORE INTO audit_log (seq, at, action, actor, client, session_id, "
                "detail, prev) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
SET_AUDIT_HEAD = ("INSERT INTO audit_head (id, size, checkpoint) VALUES (0, ?, ?) "
                  "ON CONFLICT (id) DO UPDATE SET size = excluded.size, "
                  "checkpoint = excluded.checkpoint WHERE excluded.size > audit_head.size")
_AUDIT_COLUMNS = "SELECT seq, at, action, actor, client, session_id, detail, prev FROM audit_log"
SELECT_AUDIT = _AUDIT_COLUMNS + " WHERE seq >= ? ORDER BY seq LIMIT ?"
SELECT_AUDIT_OF_SESSION = _AUDIT_COLUMNS + " WHERE session_id = ? AND seq >= ? ORDER BY seq LIMIT ?"
SELECT_LAST_AUDIT = _AUDIT_COLUMNS + " ORDER BY seq DESC LIMIT 1"
SELECT_AUDIT_CHECKPOINT = "SELECT size, checkpoint FROM audit_head WHERE id = 0"
