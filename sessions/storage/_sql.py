"""The SQLite schema, its migrations and every statement `SqliteBackend` runs.

Statements are constants; the only SQL built at run time joins constant
fragments, and every value is a bound parameter.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from sessions.common.secrets import ConfigError

SCHEMA_VERSION = 7

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

# v4: the API token that created a session (its owner), and the API tokens, hashed.
_V4 = (
    "ALTER TABLE sessions ADD COLUMN owner TEXT",
    """CREATE TABLE tokens (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BLOB NOT NULL CHECK (length(secret_hash) = 32),
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT,
        created_by TEXT
    ) WITHOUT ROWID""",
)

# v5: legal hold, and the expiry the retention sweep asks for (created_at + retention_days,
# NULL once erased, so the partial index holds only sessions still to expire).  The
# backfill keeps the `rfc3339` text form (microseconds and a Z) that comparisons rely on.
_V5 = (
    "ALTER TABLE sessions ADD COLUMN legal_hold INTEGER NOT NULL DEFAULT 0 "
    "CHECK (legal_hold IN (0, 1))",
    "ALTER TABLE sessions ADD COLUMN expires_at TEXT",
    "UPDATE sessions SET expires_at = strftime('%Y-%m-%dT%H:%M:%S', created_at, "
    "'+' || retention_days || ' days') || substr(created_at, 20) "
    "WHERE retention_days IS NOT NULL AND state != 'deleted'",
    "CREATE INDEX sessions_by_expiry ON sessions (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX sessions_by_state_updated ON sessions (state, updated_at)",
    "CREATE INDEX sessions_by_key_id ON sessions (key_id) WHERE key_id IS NOT NULL",
)

# v6: the hash-chained audit log and its signed head.  Triggers refuse edits and deletes
# through SQL (whoever holds the file can drop them: `audit verify` is what detects that).
_V6 = (
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

# v7: the writer lease of a session: its fencing token (grows by one per acquire, never
# reused, kept when released), holder and expiry.  Changed only by the compare-and-set.
_V7 = (
    "ALTER TABLE sessions ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0 "
    "CHECK (lease_token >= 0)",
    "ALTER TABLE sessions ADD COLUMN lease_holder TEXT",
    "ALTER TABLE sessions ADD COLUMN lease_expires TEXT",
)

# MIGRATIONS[v] takes a database from schema v - 1 to schema v.
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5, 6: _V6,
                                          7: _V7}


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
                    "root_hash, key_id, key_blob, upload_length, revision, owner, legal_hold, "
                    "expires_at, lease_token, lease_holder, lease_expires FROM sessions")
SELECT_SESSION_BY_ID = _SESSION_COLUMNS + " WHERE id = ?"
INSERT_SESSION = ("INSERT OR IGNORE INTO sessions (id, state, created_at, updated_at, "
                  "retention_days, chunk_size, zstd_level, format_version, key_id, key_blob, "
                  "upload_length, revision, owner, legal_hold, expires_at) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_LABEL = "INSERT INTO session_labels (session_id, key, value) VALUES (?, ?, ?)"
# The one compare-and-set: every field the rules may change, if the revision is the one read.
UPDATE_SESSION = ("UPDATE sessions SET state = ?, updated_at = ?, plain_offset = ?, "
                  "chunk_count = ?, sealed_bytes = ?, root_hash = ?, key_id = ?, key_blob = ?, "
                  "upload_length = ?, revision = ?, legal_hold = ?, expires_at = ?, "
                  "lease_token = ?, lease_holder = ?, lease_expires = ? "
                  "WHERE id = ? AND revision = ?")
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
# API tokens: the names say "token", the values are SQL (S105 is about literal secrets).
_TOKEN_COLUMNS = ("SELECT id, name, role, secret_hash, created_at, expires_at, "  # noqa: S105
                  "revoked_at, created_by FROM tokens")
INSERT_TOKEN = ("INSERT OR IGNORE INTO tokens (id, name, role, secret_hash, "  # noqa: S105
                "created_at, expires_at, revoked_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
SELECT_TOKEN = _TOKEN_COLUMNS + " WHERE id = ?"
SELECT_TOKENS = _TOKEN_COLUMNS + " ORDER BY created_at, id"
REVOKE_TOKEN = "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"  # noqa: S105
# The sweep's questions, each answered from an index (sessions_by_expiry,
# sessions_by_state_updated, sessions_by_key_id; tests check the query plans).
SELECT_EXPIRED = (_SESSION_COLUMNS + " WHERE expires_at IS NOT NULL AND expires_at <= ? "
                  "AND legal_hold = 0 ORDER BY expires_at LIMIT ?")
SELECT_IDLE = (_SESSION_COLUMNS + " WHERE state = ? AND updated_at < ? "
               "ORDER BY updated_at LIMIT ?")
KEY_USAGE = "SELECT key_id, count(*) FROM sessions WHERE key_id IS NOT NULL GROUP BY key_id"

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
