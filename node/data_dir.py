"""The data dir of one node: where its files live, who may read them, who may use it.

Opening a data dir
- creates it as a 0700 folder, or tightens one that group or others can read (and
  says so in the log): it holds the whole KV state in plain text;
- takes an exclusive `flock` on `DATA_DIR/lock` for as long as it is open, so a second
  process on the same data dir is refused at once (both would hold the same instance
  id, so the VSS fence could not tell them apart);
- creates the database file 0600 before SQLite does (SQLite gives its WAL and shared
  memory files the database file's mode).
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from node.config import ConfigError
from node.durable import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, make_private_dirs, touch_private

log = logging.getLogger(__name__)

DATABASE = "node.sqlite3"
LOCK_FILE = "lock"
_DATABASE_FILES = (DATABASE, DATABASE + "-wal", DATABASE + "-shm")


class DataDirInUse(ConfigError):
    """Another process has this data dir open."""


class DataDir:
    """An open data dir; `close()` (or the end of the process) releases its lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        make_private_dirs(self.path)
        _tighten(self.path, PRIVATE_DIR_MODE, "data dir")
        self._lock_fd: int | None = _lock(self.path / LOCK_FILE)
        for name in _DATABASE_FILES:
            if (self.path / name).exists():
                _tighten(self.path / name, PRIVATE_FILE_MODE, "database file")
        touch_private(self.database)

    @property
    def database(self) -> Path:
        return self.path / DATABASE

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(
            f"the data dir {path.parent} is in use by another vssnode process; stop it first "
            "(two processes on one data dir would both write as the same node)"
        ) from None
    return fd


def _tighten(path: Path, mode: int, what: str) -> None:
    current = stat.S_IMODE(os.stat(path).st_mode)
    if current & ~mode:
        os.chmod(path, mode)
        log.warning("%s %s was readable by others (mode %o); made it %o", what, path, current, mode)
