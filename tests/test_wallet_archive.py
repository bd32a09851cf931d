"""node.wallet_archive: wallet directory → sealed zip → server pieces → wallet directory."""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import pytest

from node.crypto import DecryptionError
from node.wallet_archive import UnsupportedWalletEntry, WalletBackup, WalletRestore, build_backup
from node.wallet_format import (
    CHUNK_SIZE,
    FINGERPRINT_KEY,
    MANIFEST_KEY,
    METADATA_KEY,
    CorruptBackup,
    Manifest,
    chunk_key,
    parse_fingerprint,
    parse_manifest,
    parse_metadata,
)
from nodeutil import snapshot
from walletutil import decrypt_wallet_blob, encrypt_wallet_blob, iter_chunks, restore_backup

VECTORS = json.loads(
    (Path(__file__).resolve().parent / "vectors" / "vectors.json").read_text()
)
SIGNING_KEY = bytes.fromhex(VECTORS["signing_key_hex"])
FP = VECTORS["master_fingerprint"]
SALT = bytes(range(32))
PREFIX = bytes(range(100, 119))


def make_small_wallet(root: Path) -> Path:
    wallet = root / "wallet" / FP
    (wallet / "db" / "nested" / "deeper").mkdir(parents=True)
    (wallet / "empty_dir").mkdir()
    (wallet / "wallet.sqlite").write_bytes(os.urandom(5000))
    (wallet / "db" / "empty_file").write_bytes(b"")
    (wallet / "db" / "nested" / "deeper" / "state.json").write_text('{"a": 1}')
    (wallet / "media file-1.bin").write_bytes(b"\x00" * 10_000)
    return wallet


def restore_target(root: Path) -> Path:
    return root / "restored" / "wallet" / FP


def leftovers(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.exists() for p in d.iterdir()]


def sealed_zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate-name case
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return encrypt_wallet_blob(SIGNING_KEY, buffer.getvalue(), SALT, PREFIX)


# --------------------------------------------------------------------------- vectors


def test_wallet_blob_vector():
    vector = VECTORS["wallet_blob"]
    salt = bytes.fromhex(vector["salt_hex"])
    prefix = bytes.fromhex(vector["nonce_prefix_hex"])
    plaintext = bytes.fromhex(vector["plaintext_hex"])
    assert vector["hkdf_info"] == "rgb-lib-vss-backup-encryption-v1"
    ciphertext = encrypt_wallet_blob(SIGNING_KEY, plaintext, salt, prefix)
    assert ciphertext.hex() == vector["ciphertext_hex"]
    assert decrypt_wallet_blob(SIGNING_KEY, ciphertext, salt, prefix) == plaintext


# ---------------------------------------------------------------------- round trips


def test_small_wallet_round_trip(tmp_path):
    wallet = make_small_wallet(tmp_path)
    with build_backup(wallet, FP, SIGNING_KEY, tmp_path / "work") as backup:
        assert backup.chunk_count == 1
        assert backup.chunk_key(0) == "backup/data"
        assert backup.total_size == backup.ciphertext_path.stat().st_size <= CHUNK_SIZE
        chunks = list(iter_chunks(backup))
        assert len(chunks) == 1 and len(chunks[0]) == backup.total_size

        # The plaintext is a Deflate zip holding everything under "<fingerprint>/".
        plain = decrypt_wallet_blob(SIGNING_KEY, chunks[0], backup.salt, backup.prefix)
        with zipfile.ZipFile(io.BytesIO(plain)) as archive:
            names = archive.namelist()
            assert all(name.startswith(FP + "/") for name in names)
            assert f"{FP}/empty_dir/" in names and f"{FP}/db/empty_file" in names
            assert archive.getinfo(f"{FP}/wallet.sqlite").compress_type == zipfile.ZIP_DEFLATED

        dest = restore_target(tmp_path)
        restore_backup(chunks, backup.salt, backup.prefix, SIGNING_KEY, FP, dest,
                       tmp_path / "restore-work", total_size=backup.total_size)
    assert snapshot(dest) == snapshot(wallet)
    assert leftovers(tmp_path / "work", tmp_path / "restore-work") == []
    assert leftovers(dest.parent) == [FP]  # no staging directory left beside it


def test_empty_wallet_round_trip(tmp_path):
    wallet = tmp_path / "wallet" / FP
    wallet.mkdir(parents=True)
    with build_backup(wallet, FP, SIGNING_KEY, tmp_path / "work") as backup:
        dest = restore_target(tmp_path)
        restore_backup(iter_chunks(backup), backup.salt, backup.prefix, SIGNING_KEY, FP,
                       dest, tmp_path / "work")
    assert dest.is_dir() and snapshot(dest) == {}


def test_multi_chunk_round_trip(tmp_path):
    wallet = tmp_path / "wallet" / FP
    (wallet / "blobs").mkdir(parents=True)
    for index in range(3):
        (wallet / "blobs" / f"part{index}").write_bytes(os.urandom(1024 * 1024 + 333))
    (wallet / "small").write_bytes(b"x")
    backup = build_backup(wallet, FP, SIGNING_KEY, tmp_path / "work")
    chunks = list(iter_chunks(backup))
    assert backup.chunk_count == len(chunks) == -(-backup.total_size // CHUNK_SIZE) > 1
    assert all(len(chunk) == CHUNK_SIZE for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= CHUNK_SIZE
    assert sum(map(len, chunks)) == backup.total_size
    assert [backup.chunk_key(i) for i in range(backup.chunk_count)] == [
        f"backup/chunk/{i}" for i in range(backup.chunk_count)
    ]
    assert [backup.read_chunk(i) for i in range(backup.chunk_count)] == chunks

    dest = restore_target(tmp_path)
    with WalletRestore(backup.salt, backup.prefix, SIGNING_KEY, FP, dest,
                       tmp_path / "restore-work", total_size=backup.total_size) as restore:
        for chunk in chunks:
            restore.feed(chunk)
        restore.finish()
    assert snapshot(dest) == snapshot(wallet)
    backup.discard()
    backup.discard()  # idempotent
    assert leftovers(tmp_path / "work", tmp_path / "restore-work") == []


def test_each_backup_uses_fresh_salt_and_prefix(tmp_path):
    wallet = make_small_wallet(tmp_path)
    with build_backup(wallet, FP, SIGNING_KEY, tmp_path / "w") as first, \
            build_backup(wallet, FP, SIGNING_KEY, tmp_path / "w") as second:
        assert first.salt != second.salt and first.prefix != second.prefix
        assert first.ciphertext_path != second.ciphertext_path


def test_restore_into_existing_empty_directory(tmp_path):
    wallet = make_small_wallet(tmp_path)
    dest = restore_target(tmp_path)
    dest.mkdir(parents=True)
    with build_backup(wallet, FP, SIGNING_KEY, tmp_path / "work") as backup:
        restore_backup(iter_chunks(backup), backup.salt, backup.prefix, SIGNING_KEY, FP,
                       dest, tmp_path / "work")
    assert snapshot(dest) == snapshot(wallet)


# ------------------------------------------------------------------ refused restores


@pytest.fixture
def chunked_backup(tmp_path):
    wallet = tmp_path / "wallet" / FP
    wallet.mkdir(parents=True)
    (wallet / "data").write_bytes(os.urandom(2 * 1024 * 1024 + 10))
    backup = build_backup(wallet, FP, SIGNING_KEY, tmp_path / "work")
    yield backup
    backup.discard()


def assert_nothing_restored(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    assert leftovers(dest.parent, tmp_path / "restore-work") == []


def test_truncated_chunk_list_is_refused(tmp_path, chunked_backup):
    backup = chunked_backup
    dest = restore_target(tmp_path)
    chunks = list(iter_chunks(backup))
    with pytest.raises(DecryptionError):
        restore_backup(chunks[:-1], backup.salt, backup.prefix, SIGNING_KEY, FP, dest,
                       tmp_path / "restore-work")
    assert_nothing_restored(tmp_path, dest)


def test_total_size_mismatch_is_refused(tmp_path, chunked_backup):
    backup = chunked_backup
    dest = restore_target(tmp_path)
    for claimed in (backup.total_size - 1, backup.total_size + 1):
        with pytest.raises(CorruptBackup):
            restore_backup(iter_chunks(backup), backup.salt, backup.prefix, SIGNING_KEY, FP,
                           dest, tmp_path / "restore-work", total_size=claimed)
        assert_nothing_restored(tmp_path, dest)


def test_wrong_key_is_refused(tmp_path, chunked_backup):
    backup = chunked_backup
    dest = restore_target(tmp_path)
    with pytest.raises(DecryptionError, match="wrong mnemonic or corrupted data"):
        restore_backup(iter_chunks(backup), backup.salt, backup.prefix, bytes(32), FP, dest,
                       tmp_path / "restore-work")
    assert_nothing_restored(tmp_path, dest)


def test_corrupted_chunk_is_refused(tmp_path, chunked_backup):
    backup = chunked_backup
    dest = restore_target(tmp_path)
    chunks = list(iter_chunks(backup))
    damaged = bytearray(chunks[1])
    damaged[12345] ^= 0x10
    chunks[1] = bytes(damaged)
    with pytest.raises(DecryptionError):
        restore_backup(chunks, backup.salt, backup.prefix, SIGNING_KEY, FP, dest,
                       tmp_path / "restore-work")
    assert_nothing_restored(tmp_path, dest)


def test_interrupted_restore_cleans_up(tmp_path, chunked_backup):
    backup = chunked_backup
    dest = restore_target(tmp_path)
    with pytest.raises(ConnectionError):
        with WalletRestore(backup.salt, backup.prefix, SIGNING_KEY, FP, dest,
                           tmp_path / "restore-work") as restore:
            restore.feed(backup.read_chunk(0))
            raise ConnectionError("server went away")
    assert_nothing_restored(tmp_path, dest)


def test_non_empty_destination_is_refused(tmp_path):
    dest = restore_target(tmp_path)
    dest.mkdir(parents=True)
    (dest / "keep").write_bytes(b"mine")
    blob = sealed_zip([(f"{FP}/a", b"x")])
    with pytest.raises(FileExistsError):
        restore_backup([blob], SALT, PREFIX, SIGNING_KEY, FP, dest, tmp_path / "restore-work")
    assert (dest / "keep").read_bytes() == b"mine"


def symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(f"{FP}/link")
    info.external_attr = 0o120777 << 16
    return info


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", b"pwned")],
        [(f"{FP}/../evil", b"pwned")],
        [(f"{FP}/../../evil", b"pwned")],
        [(f"{FP}/a/../../../evil", b"pwned")],
        [(f"{FP}/ok", b"fine"), ("/tmp/evil", b"pwned")],
        [(f"{FP}//evil", b"pwned")],
        [("otherfp0/evil", b"pwned")],
        [(f"{FP}evil", b"pwned")],
        [(FP, b"a file where the wallet folder should be")],
        [(f"{FP}/dup", b"1"), (f"{FP}/dup", b"2")],
        [(f"{FP}/a", b"file"), (f"{FP}/a/b", b"under a file")],
        [(symlink_member(), b"/etc/passwd")],
    ],
    ids=lambda members: repr([getattr(m[0], "filename", m[0]) for m in members]),
)
def test_unsafe_members_are_refused(tmp_path, members):
    dest = restore_target(tmp_path)
    blob = sealed_zip(members)
    with pytest.raises(CorruptBackup):
        restore_backup([blob], SALT, PREFIX, SIGNING_KEY, FP, dest, tmp_path / "restore-work")
    assert_nothing_restored(tmp_path, dest)
    assert not any("evil" in name for name in _all_names(tmp_path))
    assert not Path("/tmp/evil").exists()


def _all_names(root: Path) -> list[str]:
    return [name for _, dirs, files in os.walk(root) for name in [*dirs, *files]]


def test_not_a_zip_is_refused(tmp_path):
    dest = restore_target(tmp_path)
    blob = encrypt_wallet_blob(SIGNING_KEY, b"definitely not a zip archive", SALT, PREFIX)
    with pytest.raises(CorruptBackup, match="not a valid zip"):
        restore_backup([blob], SALT, PREFIX, SIGNING_KEY, FP, dest, tmp_path / "restore-work")
    assert_nothing_restored(tmp_path, dest)


def test_safe_crafted_zip_is_accepted(tmp_path):
    dest = restore_target(tmp_path)
    blob = sealed_zip([(f"{FP}/", b""), (f"{FP}/a/b/c", b"deep"), (f"{FP}/..x", b"odd name")])
    restore_backup([blob], SALT, PREFIX, SIGNING_KEY, FP, dest, tmp_path / "restore-work",
                   total_size=len(blob))
    assert snapshot(dest) == {"a": None, "a/b": None, "a/b/c": b"deep", "..x": b"odd name"}


# ----------------------------------------------------------------------- build errors


def test_symlink_in_wallet_is_refused(tmp_path):
    wallet = make_small_wallet(tmp_path)
    (wallet / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsupportedWalletEntry, match="link"):
        build_backup(wallet, FP, SIGNING_KEY, tmp_path / "work")
    assert leftovers(tmp_path / "work") == []


def test_build_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_backup(tmp_path / "missing", FP, SIGNING_KEY, tmp_path / "work")
    with pytest.raises(ValueError, match="fingerprint"):
        build_backup(tmp_path, "73C5DA0A", SIGNING_KEY, tmp_path / "work")


# -------------------------------------------------------------- manifest and metadata


def test_manifest_and_metadata_exact_json(tmp_path):
    backup = WalletBackup(
        fingerprint=FP,
        salt=SALT,
        prefix=PREFIX,
        total_size=3 * CHUNK_SIZE + 5,
        chunk_count=4,
        ciphertext_path=tmp_path / "unused",
    )
    documents = backup.documents()
    assert documents[MANIFEST_KEY] == (
        b'{"chunk_count": 4, "total_size": 3145733, "encrypted": true, "version": 1}'
    )
    assert documents[METADATA_KEY] == (
        b'{"salt": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", '
        b'"nonce": "6465666768696a6b6c6d6e6f70717273747576", "version": 1}'
    )
    assert documents[FINGERPRINT_KEY] == FP.encode()
    assert parse_manifest(documents[MANIFEST_KEY]) == Manifest(4, 3 * CHUNK_SIZE + 5)
    assert parse_metadata(documents[METADATA_KEY]) == (SALT, PREFIX)
    assert parse_fingerprint(documents[FINGERPRINT_KEY]) == FP


def test_parsers_accept_compact_json():
    assert parse_manifest(b'{"chunk_count":1,"total_size":28,"encrypted":true,"version":1}') == Manifest(1, 28)
    salt, nonce = "ab" * 32, "CD" * 19
    data = json.dumps({"version": 1, "nonce": nonce, "salt": salt}, separators=(",", ":"))
    assert parse_metadata(data.encode()) == (bytes.fromhex(salt), bytes.fromhex(nonce))


@pytest.mark.parametrize(
    "manifest",
    [
        b"",
        b"not json",
        b"[]",
        b'{"chunk_count": 1, "total_size": 28, "encrypted": true}',
        b'{"chunk_count": 1, "total_size": 28, "encrypted": true, "version": 2}',
        b'{"chunk_count": 1, "total_size": 28, "encrypted": true, "version": true}',
        b'{"chunk_count": 1, "total_size": 28, "encrypted": false, "version": 1}',
        b'{"chunk_count": 0, "total_size": 28, "encrypted": true, "version": 1}',
        b'{"chunk_count": "1", "total_size": 28, "encrypted": true, "version": 1}',
        b'{"chunk_count": 1, "total_size": 15, "encrypted": true, "version": 1}',
        b'{"chunk_count": 1.0, "total_size": 28, "encrypted": true, "version": 1}',
        b'{"chunk_count": 30, "total_size": 28, "encrypted": true, "version": 1}',
        # the chunk count must be the one the size implies, and the size is bounded
        b'{"chunk_count": 2, "total_size": 1048576, "encrypted": true, "version": 1}',
        b'{"chunk_count": 1, "total_size": 1048577, "encrypted": true, "version": 1}',
        b'{"chunk_count": 1000000, "total_size": 1048576000000, "encrypted": true, "version": 1}',
        b'{"chunk_count": 1000000, "total_size": 28, "encrypted": true, "version": 1}',
        b"[" * 200_000 + b"]" * 200_000,  # deeper than the JSON parser recurses
    ],
)
def test_bad_manifests(manifest):
    with pytest.raises(CorruptBackup):
        parse_manifest(manifest)


@pytest.mark.parametrize(
    "chunk_count, total_size, says",
    [
        (2, 1048576, "backup manifest lists 2 chunks for 1,048,576 bytes; that size is 1 chunk"),
        (1, 1048577, "backup manifest lists 1 chunk for 1,048,577 bytes; that size is 2 chunks"),
    ],
)
def test_a_manifest_whose_chunk_count_does_not_fit_its_size_says_both_counted_right(chunk_count, total_size, says):
    manifest = json.dumps({"chunk_count": chunk_count, "total_size": total_size, "encrypted": True, "version": 1})
    with pytest.raises(CorruptBackup) as caught:
        parse_manifest(manifest.encode())
    assert str(caught.value) == says


@pytest.mark.parametrize(
    "metadata",
    [
        b"{}",
        b"\xff\xfe",
        json.dumps({"salt": "00" * 31, "nonce": "00" * 19, "version": 1}).encode(),
        json.dumps({"salt": "00" * 32, "nonce": "00" * 24, "version": 1}).encode(),
        json.dumps({"salt": "zz" * 32, "nonce": "00" * 19, "version": 1}).encode(),
        json.dumps({"salt": "00 " * 32, "nonce": "00" * 19, "version": 1}).encode(),
        json.dumps({"salt": "00" * 32, "nonce": "00" * 19, "version": 3}).encode(),
        json.dumps({"salt": "00" * 32, "nonce": "00" * 19}).encode(),
    ],
)
def test_bad_metadata(metadata):
    with pytest.raises(CorruptBackup):
        parse_metadata(metadata)


def test_bad_fingerprint_value():
    for value in (b"", b"73c5da0", b"73c5da0a0", b"xyzxyzxy", b"\xff" * 8):
        with pytest.raises(CorruptBackup):
            parse_fingerprint(value)


def test_chunk_keys():
    assert chunk_key(0, 1) == "backup/data"
    assert chunk_key(0, 3) == "backup/chunk/0"
    assert chunk_key(2, 3) == "backup/chunk/2"
    with pytest.raises(IndexError):
        chunk_key(3, 3)
