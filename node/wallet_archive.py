"""The wallet stream's backup format: the wallet directory as one encrypted zip.

Building a backup (docs/FORMAT.md, "Wallet stream"): the directory is
zipped with Deflate under a top-level folder named by the wallet's fingerprint, and
the zip is sealed with STREAM under `HKDF(salt32, signing key, WALLET_INFO)` and a
random 19-byte nonce prefix. The zip is written straight through the encryptor into
one temp file, so a large wallet costs its size on disk once and a few MiB of memory;
the uploader then reads it back one `CHUNK_SIZE` piece at a time. On the server:

    backup/data        the ciphertext when it is at most 1 MiB (chunk_count = 1)
    backup/chunk/{i}   1 MiB pieces of a larger ciphertext
    backup/manifest    manifest_json()    backup/metadata   metadata_json()
    backup/fingerprint the fingerprint, UTF-8

Restoring decrypts the pieces as they arrive into a temp zip, and only once the whole
stream has authenticated unpacks it into a staging directory beside the destination,
fsyncs it and renames it into place: the destination either appears complete or not
at all. Member paths are checked before anything is written, so a zip cannot place
files outside the wallet folder.

Everything here blocks on disk and CPU: callers run it in a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from node.crypto import (
    PREFIX_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    StreamDecryptor,
    StreamEncryptor,
    stream_decrypt,
    stream_encrypt,
    wallet_key,
)

CHUNK_SIZE = 1024 * 1024
FORMAT_VERSION = 1

MANIFEST_KEY = "backup/manifest"
METADATA_KEY = "backup/metadata"
FINGERPRINT_KEY = "backup/fingerprint"
DATA_KEY = "backup/data"
CHUNK_KEY_PREFIX = "backup/chunk/"

_FINGERPRINT = re.compile(r"[0-9a-f]{8}")
_COPY_BLOCK = 1024 * 1024


class CorruptBackup(ValueError):
    """A backup on the server is malformed, incomplete or unsafe to unpack."""


class UnsupportedWalletEntry(ValueError):
    """The wallet directory holds something a backup cannot carry (a symlink, a device)."""


def check_fingerprint(fingerprint: str) -> str:
    """Return `fingerprint` if it is 8 lower-case hex characters, else raise ValueError."""
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(
            f"wallet fingerprint must be 8 lower-case hex characters, got {fingerprint!r}"
        )
    return fingerprint


def chunk_count_for(total_size: int) -> int:
    """How many server pieces a ciphertext of `total_size` bytes is written as."""
    return max(1, -(-total_size // CHUNK_SIZE))


def chunk_key(index: int, chunk_count: int) -> str:
    """The VSS key of piece `index` of a backup of `chunk_count` pieces."""
    if not 0 <= index < chunk_count:
        raise IndexError(f"chunk {index} out of range for a backup of {chunk_count} chunks")
    return DATA_KEY if chunk_count == 1 else f"{CHUNK_KEY_PREFIX}{index}"


def encrypt_wallet_blob(signing_key: bytes, plaintext: bytes, salt: bytes, prefix: bytes) -> bytes:
    """Seal a whole wallet zip held in memory (small wallets, test vectors)."""
    return stream_encrypt(wallet_key(signing_key, salt), prefix, plaintext)


def decrypt_wallet_blob(signing_key: bytes, ciphertext: bytes, salt: bytes, prefix: bytes) -> bytes:
    """Open a whole wallet ciphertext held in memory; raises DecryptionError."""
    return stream_decrypt(wallet_key(signing_key, salt), prefix, ciphertext)


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

    def iter_chunks(self) -> Iterator[bytes]:
        """The ciphertext in order, CHUNK_SIZE bytes at a time (the last one shorter)."""
        with open(self.ciphertext_path, "rb") as source:
            while piece := source.read(CHUNK_SIZE):
                yield piece

    def manifest_json(self) -> bytes:
        """The value of `backup/manifest`."""
        return json.dumps(
            {
                "chunk_count": self.chunk_count,
                "total_size": self.total_size,
                "encrypted": True,
                "version": FORMAT_VERSION,
            }
        ).encode()

    def metadata_json(self) -> bytes:
        """The value of `backup/metadata`."""
        return json.dumps(
            {"salt": self.salt.hex(), "nonce": self.prefix.hex(), "version": FORMAT_VERSION}
        ).encode()

    def fingerprint_value(self) -> bytes:
        """The value of `backup/fingerprint`."""
        return self.fingerprint.encode()

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
    work_dir.mkdir(parents=True, exist_ok=True)
    salt = os.urandom(SALT_SIZE)
    prefix = os.urandom(PREFIX_SIZE)
    encryptor = StreamEncryptor(wallet_key(signing_key, salt), prefix)
    fd, name = tempfile.mkstemp(prefix="wallet-backup-", suffix=".sealed", dir=work_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _EncryptingSink(out, encryptor)
            with zipfile.ZipFile(
                sink,  # type: ignore[arg-type]
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


# ------------------------------------------------------------------- server documents


def _json_object(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, TypeError):
        raise CorruptBackup(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CorruptBackup(f"{what} is not a JSON object")
    return value


def _int_field(doc: dict, field: str, what: str, minimum: int) -> int:
    value = doc.get(field)
    if type(value) is not int or value < minimum:
        raise CorruptBackup(
            f"{what} field {field!r} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def _check_version(doc: dict, what: str) -> None:
    version = doc.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CorruptBackup(
            f"{what} has version {version!r}; this node reads version {FORMAT_VERSION}"
        )


def _hex_field(doc: dict, field: str, what: str, size: int) -> bytes:
    value = doc.get(field)
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-fA-F]{{{2 * size}}}", value):
        raise CorruptBackup(f"{what} field {field!r} must be {size} bytes of hex")
    return bytes.fromhex(value)


def parse_manifest(data: bytes) -> tuple[int, int]:
    """`(chunk_count, total_size)` from a `backup/manifest` value; raises CorruptBackup."""
    doc = _json_object(data, "backup manifest")
    _check_version(doc, "backup manifest")
    if doc.get("encrypted") is not True:
        raise CorruptBackup(
            "backup manifest says the backup is not encrypted; only encrypted backups are read"
        )
    chunk_count = _int_field(doc, "chunk_count", "backup manifest", 1)
    total_size = _int_field(doc, "total_size", "backup manifest", TAG_SIZE)
    if chunk_count > total_size:
        raise CorruptBackup(
            f"backup manifest lists {chunk_count} chunks for only {total_size} bytes"
        )
    return chunk_count, total_size


def parse_metadata(data: bytes) -> tuple[bytes, bytes]:
    """`(salt, prefix)` from a `backup/metadata` value; raises CorruptBackup."""
    doc = _json_object(data, "backup metadata")
    _check_version(doc, "backup metadata")
    return (
        _hex_field(doc, "salt", "backup metadata", SALT_SIZE),
        _hex_field(doc, "nonce", "backup metadata", PREFIX_SIZE),
    )


def parse_fingerprint(data: bytes) -> str:
    """The fingerprint from a `backup/fingerprint` value; raises CorruptBackup."""
    try:
        return check_fingerprint(data.decode("utf-8").strip().lower())
    except (UnicodeDecodeError, ValueError):
        raise CorruptBackup("backup fingerprint is not 8 hex characters") from None


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "xb") as out:
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
        _fsync_dir(Path(current))


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
        work_dir.mkdir(parents=True, exist_ok=True)
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
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self._dest_dir.name}.restore-", dir=parent))
        try:
            root = staging / self._fingerprint
            root.mkdir()
            _unpack(self._zip_path, self._fingerprint, root)
            os.rename(root, self._dest_dir)
            _fsync_dir(parent)
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


def restore_backup(
    chunks: Iterable[bytes],
    salt: bytes,
    prefix: bytes,
    signing_key: bytes,
    fingerprint: str,
    dest_dir: Path,
    work_dir: Path,
    *,
    total_size: int | None = None,
) -> None:
    """Restore a backup from its ciphertext pieces, in order, into `dest_dir`.

    `total_size` (the manifest's) is checked when given. See WalletRestore for the
    guarantees and errors.
    """
    with WalletRestore(
        salt, prefix, signing_key, fingerprint, dest_dir, work_dir, total_size=total_size
    ) as restore:
        for chunk in chunks:
            restore.feed(chunk)
        restore.finish()
