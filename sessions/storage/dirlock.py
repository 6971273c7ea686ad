"""One storage process per local chunk directory: an exclusive `flock` held for its lifetime.

The local chunk store publishes a chunk by a rename under the session's in-process lock,
and its start-up sweep removes every staged file past the committed count: both are
right only if no other process writes to the directory.  A second storage process on
the same data dir therefore refuses to start.  Several storage processes need the S3
chunk store (README, "Several storage processes").  The kernel drops the lock when the
process dies, however it dies, so a crashed storage restarts at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sessions.common.secrets import ConfigError

LOCK_FILE = "storage.lock"


class DirectoryLock:
    """An exclusive, non-blocking flock on `<directory>/storage.lock`; `release` gives it up."""

    def __init__(self, directory: Path) -> None:
        """Take the lock; raise ConfigError naming the directory if a live process holds it."""
        self.path = directory / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"another storage process uses the chunk directory under {directory} (it holds "
                f"{self.path}); the local chunk store serves one process: give each storage "
                "its own LUCID_DATA_DIR, or share chunks through LUCID_CHUNK_STORE_URL=s3://..."
            ) from None
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
