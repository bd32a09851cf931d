"""The wallet directory as one encrypted zip: building a backup, and restoring one.

Building: the directory is zipped with Deflate under a top-level folder named by the
wallet's fingerprint, and the zip is sealed with STREAM under `HKDF(salt32, signing
key, WALLET_INFO)` and a random 19-byte nonce prefix. The zip is written straight
through the encryptor into one temp file, so a large wallet costs its size on disk once
and a few MiB of memory; the uploader then reads it back one piece at a time. What the
server holds, and under which keys, is `node.wallet_format`.

Restoring decrypts the pieces as they arrive into a temp zip, and only once the whole
stream has authenticated unpacks it into a staging directory beside the destination,
fsyncs it and renames it into place: the destination either appears complete or not
at all. Member paths are checked before anything is written, so a zip cannot place
files outside the wallet folder; every file restored is 0600, every folder 0700.

Everything here blocks on disk and CPU: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from node.crypto import PREFIX_SIZE, SALT_SIZE, StreamDecryptor, StreamEncryptor, wallet_key
from node.durable import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, fsync_dir, make_private_dirs
from node.wallet_format import (
    CHUNK_SIZE,
    FINGERPRINT_KEY,
    MANIFEST_KEY,
    METADATA_KEY,
    CorruptBackup,
    Manifest,
    check_fingerprint,
    chunk_count_for,
    chunk_key,
    fingerprint_document,
    manifest_document,
    metadata_document,
)

_COPY_BLOCK = 1024 * 1024


class UnsupportedWalletEntry(ValueError):
    """The wallet directory holds something a backup cannot carry (a symlink, a device)."""


# ---------------------------------------------------------------------------- building


@dataclass(frozen=True)
class WalletBackup:
    """One sealed wallet backup, its ciphertext in a temp file until `discard()`.

    Use it as a context manager, or call `discard()` once uploaded, so the temp
    file does not outlive the upload.
    """

    fingerprint: str
    salt: bytes
    prefix: bytes
    total_size: int
    chunk_count: int
    ciphertext_path: Path

    def chunk_key(self, index: int) -> str:
        """The VSS key of piece `index`: `backup/data` or `backup/chunk/{index}`."""
        return chunk_key(index, self.chunk_count)

    def read_chunk(self, index: int) -> bytes:
        """Piece `index` of the ciphertext (at most CHUNK_SIZE bytes), e.g. for a retry."""
        self.chunk_key(index)  # range check
        with open(self.ciphertext_path, "rb") as source:
            source.seek(index * CHUNK_SIZE)
            return source.read(CHUNK_SIZE)

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.chunk_count, self.total_size)

    def documents(self) -> dict[str, bytes]:
        """The values of `backup/manifest`, `backup/metadata` and `backup/fingerprint`."""
        return {
            MANIFEST_KEY: manifest_document(self.manifest),
            METADATA_KEY: metadata_document(self.salt, self.prefix),
            FINGERPRINT_KEY: fingerprint_document(self.fingerprint),
        }

    def discard(self) -> None:
        """Delete the ciphertext temp file (idempotent)."""
        self.ciphertext_path.unlink(missing_ok=True)

    def __enter__(self) -> WalletBackup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


class _EncryptingSink:
    """A write-only, unseekable file for zipfile: everything written is sealed on the way
    to `out`. zipfile handles unseekable output itself (data descriptors), which is what
    lets the zip and the ciphertext be produced in one pass."""

    def __init__(self, out: BinaryIO, encryptor: StreamEncryptor) -> None:
        self._out = out
        self._encryptor = encryptor

    def write(self, data: bytes) -> int:
        self._out.write(self._encryptor.update(bytes(data)))
        return len(data)

    def flush(self) -> None:
        pass


def _add_tree(archive: zipfile.ZipFile, wallet_dir: Path, fingerprint: str) -> None:
    archive.write(wallet_dir, fingerprint + "/")
    for current, dirnames, filenames in os.walk(wallet_dir, followlinks=False):
        dirnames.sort()
        base = Path(current)
        for name in [*dirnames, *sorted(filenames)]:
            path = base / name
            mode = os.lstat(path).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise UnsupportedWalletEntry(
                    f"wallet entry {path.relative_to(wallet_dir)} is neither a regular file nor "
                    "a directory (symlinks and special files cannot be backed up)"
                )
            arcname = f"{fingerprint}/{path.relative_to(wallet_dir).as_posix()}"
            archive.write(path, arcname + "/" if stat.S_ISDIR(mode) else arcname)


def build_backup(
    wallet_dir: Path, fingerprint: str, signing_key: bytes, work_dir: Path
) -> WalletBackup:
    """Zip and seal `wallet_dir` into a temp file in `work_dir`; return the backup.

    The wallet must not change while this runs (the caller serializes wallet
    operations with backups). Raises UnsupportedWalletEntry for symlinks or special
    files, FileNotFoundError when `wallet_dir` is not a directory, OSError on disk
    errors; no temp file is left behind on failure.
    """
    check_fingerprint(fingerprint)
    wallet_dir = Path(wallet_dir)
    if not wallet_dir.is_dir():
        raise FileNotFoundError(f"wallet directory {wallet_dir} does not exist")
    work_dir = Path(work_dir)
    make_private_dirs(work_dir)
    salt = os.urandom(SALT_SIZE)
    prefix = os.urandom(PREFIX_SIZE)
    encryptor = StreamEncryptor(wallet_key(signing_key, salt), prefix)
    fd, name = tempfile.mkstemp(prefix="wallet-backup-", suffix=".sealed", dir=work_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _EncryptingSink(out, encryptor)
            with zipfile.ZipFile(
                sink,  # type: ignore[call-overload]
                "w",
                compression=zipfile.ZIP_DEFLATED,
                strict_timestamps=False,
            ) as archive:
                _add_tree(archive, wallet_dir, fingerprint)
            out.write(encryptor.finalize())
            total_size = out.tell()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return WalletBackup(
        fingerprint=fingerprint,
        salt=salt,
        prefix=prefix,
        total_size=total_size,
        chunk_count=chunk_count_for(total_size),
        ciphertext_path=path,
    )


# ---------------------------------------------------------------------------- restoring


def _member_parts(name: str, fingerprint: str) -> tuple[str, ...]:
    """The path of a zip member inside the wallet folder, refusing anything unsafe."""
    parts = name.split("/")
    if name.endswith("/"):
        parts.pop()
    if "\x00" in name or not parts or parts[0] != fingerprint:
        raise CorruptBackup(f"backup member {name!r} lies outside the wallet folder {fingerprint}/")
    rest = tuple(parts[1:])
    if any(part in ("", ".", "..") for part in rest):
        raise CorruptBackup(f"backup member {name!r} has an unsafe path")
    if not rest and not name.endswith("/"):
        raise CorruptBackup(f"backup member {name!r} is a file in place of the wallet folder")
    return rest


def _unpack(zip_path: Path, fingerprint: str, root: Path) -> None:
    """Write the members of the wallet folder under `root` (which exists), fsynced."""
    real_root = os.path.realpath(root)
    seen: set[tuple[str, ...]] = set()
    member = ""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for info in archive.infolist():
                member = info.filename
                rest = _member_parts(info.filename, fingerprint)
                if rest in seen:
                    raise CorruptBackup(f"backup member {info.filename!r} appears twice")
                seen.add(rest)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise CorruptBackup(f"backup member {info.filename!r} is a symlink")
                target = root.joinpath(*rest)
                if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
                    raise CorruptBackup(
                        f"backup member {info.filename!r} escapes the wallet folder"
                    )
                if info.is_dir():
                    make_private_dirs(target)
                    continue
                make_private_dirs(target.parent)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
                with archive.open(info) as source, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, _COPY_BLOCK)
                    out.flush()
                    os.fsync(out.fileno())
    except zipfile.BadZipFile as error:
        raise CorruptBackup(f"backup is not a valid zip: {error}") from None
    except (zlib.error, EOFError) as error:
        raise CorruptBackup(f"backup zip is damaged: {error}") from None
    except NotImplementedError as error:
        raise CorruptBackup(f"backup zip uses an unsupported feature: {error}") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        raise CorruptBackup(
            f"backup member {member!r} clashes with another member ({error.strerror})"
        ) from None
    for current, _dirs, _files in os.walk(root, topdown=False):
        fsync_dir(Path(current))


class WalletRestore:
    """Restore one wallet backup, fed its ciphertext pieces in order as they arrive.

    `feed()` each piece, then `finish()`: it checks the whole stream, unpacks it and
    renames the result into `dest_dir`. Any failure, or leaving a `with` block early,
    removes every temp file and leaves `dest_dir` untouched. `dest_dir` must not exist,
    or be an empty directory. Raises DecryptionError (wrong mnemonic, corrupted or
    truncated data) or CorruptBackup (bad size, unsafe or damaged zip).
    """

    def __init__(
        self,
        salt: bytes,
        prefix: bytes,
        signing_key: bytes,
        fingerprint: str,
        dest_dir: Path,
        work_dir: Path,
        *,
        total_size: int | None = None,
    ) -> None:
        check_fingerprint(fingerprint)
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
        self._fingerprint = fingerprint
        self._dest_dir = Path(dest_dir)
        if self._dest_dir.exists() and (
            not self._dest_dir.is_dir() or any(self._dest_dir.iterdir())
        ):
            raise FileExistsError(
                f"restore destination {self._dest_dir} exists and is not an empty directory"
            )
        self._expected_size = total_size
        self._received = 0
        self._decryptor = StreamDecryptor(wallet_key(signing_key, salt), prefix)
        work_dir = Path(work_dir)
        make_private_dirs(work_dir)
        fd, name = tempfile.mkstemp(prefix="wallet-restore-", suffix=".zip", dir=work_dir)
        self._zip_path = Path(name)
        self._zip_file = os.fdopen(fd, "wb")
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        """Decrypt the next piece of ciphertext into the temp zip."""
        if self._closed:
            raise ValueError("wallet restore already finished or aborted")
        try:
            self._received += len(chunk)
            if self._expected_size is not None and self._received > self._expected_size:
                raise CorruptBackup(
                    f"backup is longer than the {self._expected_size} bytes its manifest states"
                )
            self._zip_file.write(self._decryptor.update(bytes(chunk)))
        except BaseException:
            self.abort()
            raise

    def finish(self) -> None:
        """Authenticate the end of the stream, unpack, and move the wallet into place."""
        if self._closed:
            raise ValueError("wallet restore already finished or aborted")
        try:
            self._zip_file.write(self._decryptor.finalize())
            self._zip_file.close()
            if self._expected_size is not None and self._received != self._expected_size:
                raise CorruptBackup(
                    f"backup has {self._received} bytes, its manifest states {self._expected_size}"
                )
            self._install()
        finally:
            self.abort()

    def _install(self) -> None:
        parent = self._dest_dir.parent
        make_private_dirs(parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{self._dest_dir.name}.restore-", dir=parent))
        try:
            root = staging / self._fingerprint
            root.mkdir(PRIVATE_DIR_MODE)
            _unpack(self._zip_path, self._fingerprint, root)
            os.rename(root, self._dest_dir)
            fsync_dir(parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def abort(self) -> None:
        """Drop the restore and its temp files (idempotent); `dest_dir` is not touched."""
        self._closed = True
        self._zip_file.close()
        self._zip_path.unlink(missing_ok=True)

    def __enter__(self) -> WalletRestore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._closed:
            self.abort()
