"""Making a file system change durable: the one place a directory is fsync'd.

A file renamed into a directory (or removed from it) survives a power cut only once the
directory itself is fsync'd; the file's own fsync covers its bytes, not its name.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make the entries of `directory` durable (OSError if it cannot be opened or synced)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
