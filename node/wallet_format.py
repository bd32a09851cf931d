"""The wallet stream's documents on the server: their keys, and how they are written
and read (docs/FORMAT.md, "The wallet stream").

    backup/manifest     {"chunk_count", "total_size", "encrypted": true, "version": 1}
    backup/metadata     {"salt": hex32, "nonce": hex19, "version": 1}
    backup/fingerprint  the wallet's fingerprint, 8 hex characters
    backup/data         the ciphertext when it is at most 1 MiB (chunk_count = 1)
    backup/chunk/{i}    1 MiB pieces of a larger ciphertext

A manifest is checked before anything is allocated for it: its chunk count must be the
one its size implies, and the size has a ceiling, so a hostile or damaged manifest
cannot make a restore reserve memory or tasks for a million pieces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from node.crypto import PREFIX_SIZE, SALT_SIZE, TAG_SIZE
from vss.wording import counted

CHUNK_SIZE = 1024 * 1024
FORMAT_VERSION = 1
MAX_BACKUP_BYTES = 64 * 1024**3
"""The largest wallet ciphertext a restore accepts (64 GiB, 65,536 pieces)."""

MANIFEST_KEY = "backup/manifest"
METADATA_KEY = "backup/metadata"
FINGERPRINT_KEY = "backup/fingerprint"
DATA_KEY = "backup/data"
CHUNK_KEY_PREFIX = "backup/chunk/"
BACKUP_PREFIX = "backup/"

_FINGERPRINT = re.compile(r"[0-9a-f]{8}")


class CorruptBackup(ValueError):
    """A backup on the server is malformed, incomplete or unsafe to unpack."""


@dataclass(frozen=True)
class Manifest:
    """What `backup/manifest` says: how many pieces, and how many ciphertext bytes."""

    chunk_count: int
    total_size: int


def check_fingerprint(fingerprint: str) -> str:
    """Return `fingerprint` if it is 8 lower-case hex characters, else raise ValueError."""
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"wallet fingerprint must be 8 lower-case hex characters, got {fingerprint!r}")
    return fingerprint


def chunk_count_for(total_size: int) -> int:
    """How many server pieces a ciphertext of `total_size` bytes is written as."""
    return max(1, -(-total_size // CHUNK_SIZE))


def chunk_key(index: int, chunk_count: int) -> str:
    """The VSS key of piece `index` of a backup of `chunk_count` pieces."""
    if not 0 <= index < chunk_count:
        raise IndexError(f"chunk {index} out of range for a backup of {chunk_count} chunks")
    return DATA_KEY if chunk_count == 1 else f"{CHUNK_KEY_PREFIX}{index}"


def is_piece_key(key: str) -> bool:
    """Whether `key` holds ciphertext (`backup/data` or a chunk)."""
    return key == DATA_KEY or key.startswith(CHUNK_KEY_PREFIX)


def manifest_document(manifest: Manifest) -> bytes:
    """The value of `backup/manifest`."""
    return json.dumps(
        {"chunk_count": manifest.chunk_count, "total_size": manifest.total_size, "encrypted": True, "version": FORMAT_VERSION}
    ).encode()


def metadata_document(salt: bytes, prefix: bytes) -> bytes:
    """The value of `backup/metadata`."""
    return json.dumps({"salt": salt.hex(), "nonce": prefix.hex(), "version": FORMAT_VERSION}).encode()


def fingerprint_document(fingerprint: str) -> bytes:
    """The value of `backup/fingerprint`."""
    return check_fingerprint(fingerprint).encode()


# -- reading ----------------------------------------------------------------------------------


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, TypeError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise CorruptBackup(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise CorruptBackup(f"{what} is not a JSON object")
    return value


def _int_field(doc: dict[str, Any], name: str, what: str, minimum: int) -> int:
    value = doc.get(name)
    if type(value) is not int or value < minimum:
        raise CorruptBackup(f"{what} field {name!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_version(doc: dict[str, Any], what: str) -> None:
    version = doc.get("version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CorruptBackup(f"{what} has version {version!r}; this node reads version {FORMAT_VERSION}")


def _hex_field(doc: dict[str, Any], name: str, what: str, size: int) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str) or not re.fullmatch(f"[0-9a-fA-F]{{{2 * size}}}", value):
        raise CorruptBackup(f"{what} field {name!r} must be {size} bytes of hex")
    return bytes.fromhex(value)


def parse_manifest(data: bytes) -> Manifest:
    """The manifest in a `backup/manifest` value; raises CorruptBackup.

    The chunk count must be exactly what the size implies (1 MiB pieces, one piece for
    a backup of at most 1 MiB) and the size at most MAX_BACKUP_BYTES: a restore then
    never plans for more pieces than the ciphertext can fill.
    """
    doc = _json_object(data, "backup manifest")
    _check_version(doc, "backup manifest")
    if doc.get("encrypted") is not True:
        raise CorruptBackup("backup manifest says the backup is not encrypted; only encrypted backups are read")
    chunk_count = _int_field(doc, "chunk_count", "backup manifest", 1)
    total_size = _int_field(doc, "total_size", "backup manifest", TAG_SIZE)
    if total_size > MAX_BACKUP_BYTES:
        raise CorruptBackup(f"backup manifest states {total_size} bytes, over the {MAX_BACKUP_BYTES}-byte limit")
    expected = chunk_count_for(total_size)
    if chunk_count != expected:
        raise CorruptBackup(
            f"backup manifest lists {counted(chunk_count, 'chunk')} for {counted(total_size, 'byte')}; "
            f"that size is {counted(expected, 'chunk')}"
        )
    return Manifest(chunk_count, total_size)


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
