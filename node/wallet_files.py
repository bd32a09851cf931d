"""The wallet directory on disk: path-safe file operations, and where the wallet lives.

A wallet path comes from an HTTP request, so it is hostile until proven otherwise. It
must be relative, `/`-separated, with no empty, `.` or `..` part, no NUL and no
backslash; anything else is `InvalidPath` before the disk is touched. The directories
on the way are then opened one by one from the wallet root with `O_NOFOLLOW`, so a
symlink anywhere on the way (or as the target itself) is refused too, even one that
appeared after the string was checked. A refused path writes nothing.

Writes are atomic and durable: the data goes to a temp file in the target's own
directory, is fsynced, renamed over the target, and the directory is fsynced. A reader
sees the old file or the new one, never a mix, and a crash leaves one of the two. Temp
files carry a reserved prefix that wallet paths may not use; `remove_temp_files` sweeps
the ones a crash left behind. Deleting a file also removes the folders it leaves empty,
so the directory always mirrors its set of files.

`WalletHome` says where one wallet lives in the data dir (`wallet/<fingerprint>/`), where
its backups are built (`wallet/.work/`), and keeps the wallet stream's durable markers
beside it (never inside it, so they are not backed up themselves): "backup required"
(the server lacks a change), "remote incomplete" (a piece-by-piece upload is under way:
the server's backup does not restore until it ends) and "remote unreadable" (the
server's backup could not be read at a restore; nothing is uploaded over it until the
operator says so).

Everything here blocks on the disk: the actors call it from worker threads.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.durable import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, fsync_dir, make_private_dirs
from node.errors import InvalidPath, NotFound

TEMP_PREFIX = ".vssnode-tmp-"
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(path: str) -> tuple[str, ...]:
    """The parts of a wallet path, or InvalidPath saying what is wrong with it."""
    if not isinstance(path, str) or not path:
        raise InvalidPath("the wallet path is empty; name a file inside the wallet directory")
    if "\x00" in path:
        raise InvalidPath("the wallet path contains a NUL character")
    if "\\" in path:
        raise InvalidPath("the wallet path contains a backslash; separate folders with '/'")
    if path.startswith("/"):
        raise InvalidPath(f"the wallet path {path!r} is absolute; give it relative to the wallet directory")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPath("the wallet path is not valid UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise InvalidPath(f"the wallet path is {size} bytes long; the limit is {MAX_PATH_BYTES}")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidPath(f"the wallet path {path!r} has an empty, '.' or '..' part")
        if part.startswith(TEMP_PREFIX):
            raise InvalidPath(f"names starting with {TEMP_PREFIX!r} are reserved for the node's temp files")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidPath(f"a name in the wallet path is longer than {MAX_NAME_BYTES} bytes")
    return parts


class _OpenDirs:
    """The chain of directory fds from the wallet root down to a target's parent.

    `fds[0]` is the root; `fds[i]` is the folder `parts[i - 1]`. Folders that do not
    exist yet are listed in `missing` (only the first missing one and those below it).
    """

    def __init__(self, root: Path, parts: tuple[str, ...]) -> None:
        self.parts = parts
        self.fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        self.missing: tuple[str, ...] = ()
        try:
            for i, part in enumerate(parts):
                try:
                    fd = os.open(part, _DIR_FLAGS, dir_fd=self.fds[-1])
                except FileNotFoundError:
                    self.missing = parts[i:]
                    return
                except OSError as exc:
                    raise _refusal(self.fds[-1], part, "/".join(parts[: i + 1]), exc) from None
                self.fds.append(fd)
        except BaseException:
            self.close()
            raise

    @property
    def parent(self) -> int:
        return self.fds[-1]

    def create_missing(self) -> None:
        """Create the missing folders, each made durable in its parent."""
        for part in self.missing:
            os.mkdir(part, PRIVATE_DIR_MODE, dir_fd=self.parent)
            os.fsync(self.parent)
            self.fds.append(os.open(part, _DIR_FLAGS, dir_fd=self.parent))
        self.missing = ()

    def prune_empty(self) -> None:
        """Remove the folders of the chain that are now empty, deepest first."""
        for depth in range(len(self.fds) - 1, 0, -1):
            try:
                os.rmdir(self.parts[depth - 1], dir_fd=self.fds[depth - 1])
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return
                raise
            os.fsync(self.fds[depth - 1])

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def __enter__(self) -> _OpenDirs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _refusal(dir_fd: int, name: str, shown: str, exc: OSError) -> InvalidPath | OSError:
    """Name why `name` (in `dir_fd`) cannot be passed through, or give back the error."""
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return exc
    if stat.S_ISLNK(mode):
        return InvalidPath(f"{shown!r} in the wallet directory is a symbolic link; links are refused")
    if not stat.S_ISDIR(mode):
        return InvalidPath(f"{shown!r} in the wallet directory is a file, not a folder")
    return exc


def _target_mode(dirs: _OpenDirs, name: str) -> int | None:
    """The lstat mode of the target, None if absent; refuses links and folders."""
    if dirs.missing:
        return None
    try:
        mode = os.lstat(name, dir_fd=dirs.parent).st_mode
    except FileNotFoundError:
        return None
    shown = "/".join(dirs.parts + (name,))
    if stat.S_ISLNK(mode):
        raise InvalidPath(f"{shown!r} in the wallet directory is a symbolic link; links are refused")
    if stat.S_ISDIR(mode):
        raise InvalidPath(f"{shown!r} in the wallet directory is a folder, not a file")
    return mode


def write_file(root: Path, path: str, data: bytes, before_commit: Callable[[], None] | None = None) -> None:
    """Replace (or create) the file at `path` with `data`, atomically and durably.

    `before_commit` runs once every check has passed, right before the first change to
    the directory: the place to make "this wallet changed" durable first.
    """
    *folders, name = split_path(path)
    with _OpenDirs(root, tuple(folders)) as dirs:
        _target_mode(dirs, name)
        if before_commit is not None:
            before_commit()
        dirs.create_missing()
        temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, PRIVATE_FILE_MODE, dir_fd=dirs.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(temp, name, src_dir_fd=dirs.parent, dst_dir_fd=dirs.parent)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=dirs.parent)
            except FileNotFoundError:
                pass
            raise
        os.fsync(dirs.parent)


def read_file(root: Path, path: str) -> bytes:
    """The content of the file at `path`; NotFound if there is no such file."""
    *folders, name = split_path(path)
    with _OpenDirs(root, tuple(folders)) as dirs:
        if dirs.missing:
            raise NotFound(f"no wallet file {path!r}")
        try:
            # O_NONBLOCK: opening a FIFO someone planted must not hang the worker thread.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirs.parent)
        except FileNotFoundError:
            raise NotFound(f"no wallet file {path!r}") from None
        except OSError as exc:
            raise _refusal(dirs.parent, name, path, exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotFound(f"{path!r} in the wallet directory is not a file")
        with os.fdopen(fd, "rb") as source:
            return source.read()


def delete_file(root: Path, path: str, before_commit: Callable[[], None] | None = None) -> bool:
    """Delete the file at `path` (and the folders it leaves empty); False if it was absent.

    `before_commit` runs only when there is something to delete, before deleting it.
    """
    *folders, name = split_path(path)
    with _OpenDirs(root, tuple(folders)) as dirs:
        if _target_mode(dirs, name) is None:
            return False
        if before_commit is not None:
            before_commit()
        os.unlink(name, dir_fd=dirs.parent)
        os.fsync(dirs.parent)
        dirs.prune_empty()
        return True


def list_files(root: Path) -> list[tuple[str, int]]:
    """Every regular file under `root` as (relative posix path, size), sorted by path.

    Symlinks and other special entries are not listed (nor followed), nor temp files.
    """
    found = []
    for current, _dirs, files in os.walk(root, followlinks=False):
        base = Path(current)
        for name in files:
            if name.startswith(TEMP_PREFIX):
                continue
            info = os.lstat(base / name)
            if stat.S_ISREG(info.st_mode):
                found.append(((base / name).relative_to(root).as_posix(), info.st_size))
    return sorted(found)


def remove_temp_files(root: Path) -> int:
    """Delete the temp files that an interrupted write left behind; returns how many."""
    removed = 0
    for current, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                os.unlink(Path(current) / name)
                removed += 1
    return removed


BACKUP_REQUIRED = "backup-required"
REMOTE_INCOMPLETE = "remote-incomplete"
REMOTE_UNREADABLE = "remote-unreadable"


@dataclass(frozen=True)
class WalletHome:
    """Where the wallet of one fingerprint lives in a data dir, and its durable markers."""

    data_dir: Path
    fingerprint: str

    @property
    def parent(self) -> Path:
        return self.data_dir / "wallet"

    @property
    def root(self) -> Path:
        """The wallet directory itself: `DATA_DIR/wallet/<fingerprint>/`."""
        return self.parent / self.fingerprint

    @property
    def work_dir(self) -> Path:
        """Temp files of builds and restores (sealed backups, downloaded zips)."""
        return self.parent / ".work"

    @property
    def staged(self) -> Path:
        """A restored wallet waiting to be put in place (a leftover if found at unlock)."""
        return self.parent / f".{self.fingerprint}.restore-staged"

    def _marker(self, name: str) -> Path:
        return self.parent / f".{self.fingerprint}.{name}"

    def exists(self) -> bool:
        return self.root.is_dir()

    def create_empty(self) -> None:
        """Create the wallet directory (empty) durably, if it is not there."""
        make_private_dirs(self.root)
        fsync_dir(self.parent)

    def install_staged(self) -> None:
        """Rename the staged restore into place, durably."""
        os.rename(self.staged, self.root)
        fsync_dir(self.parent)

    # -- the durable markers: present means true -----------------------------------------

    def flag(self, name: str) -> bool:
        """Whether marker `name` (BACKUP_REQUIRED, REMOTE_INCOMPLETE, REMOTE_UNREADABLE) is set."""
        return self._marker(name).exists()

    def set_flag(self, name: str, value: bool) -> None:
        """Set or clear a marker durably (the folder entry is fsynced either way)."""
        path = self._marker(name)
        if value == path.exists():
            return
        if value:
            make_private_dirs(self.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            path.unlink(missing_ok=True)
        fsync_dir(self.parent)

    def remove_leftovers(self) -> None:
        """Drop what an interrupted build or restore left: work files, restore staging."""
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.parent.is_dir():
            # WalletRestore stages beside its destination as ".<dest name>.restore-*"
            for pattern in (f".{self.fingerprint}.restore-*", f"..{self.fingerprint}.restore-*"):
                for leftover in self.parent.glob(pattern):
                    shutil.rmtree(leftover, ignore_errors=True)
        if self.root.is_dir():
            remove_temp_files(self.root)
