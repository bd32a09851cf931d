"""Wallet-backup helpers the tests need and the node does not: whole blobs in memory,
a backup read back as pieces, a restore from pieces in one call."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from node.crypto import stream_decrypt, stream_encrypt, wallet_key
from node.wallet_archive import WalletBackup, WalletRestore
from node.wallet_format import CHUNK_SIZE


def encrypt_wallet_blob(signing_key: bytes, plaintext: bytes, salt: bytes, prefix: bytes) -> bytes:
    return stream_encrypt(wallet_key(signing_key, salt), prefix, plaintext)


def decrypt_wallet_blob(signing_key: bytes, ciphertext: bytes, salt: bytes, prefix: bytes) -> bytes:
    return stream_decrypt(wallet_key(signing_key, salt), prefix, ciphertext)


def iter_chunks(backup: WalletBackup) -> Iterator[bytes]:
    with open(backup.ciphertext_path, "rb") as source:
        while piece := source.read(CHUNK_SIZE):
            yield piece


def restore_backup(chunks: Iterable[bytes], salt: bytes, prefix: bytes, signing_key: bytes, fingerprint: str,
                   dest_dir: Path, work_dir: Path, *, total_size: int | None = None) -> None:
    with WalletRestore(salt, prefix, signing_key, fingerprint, dest_dir, work_dir, total_size=total_size) as restore:
        for chunk in chunks:
            restore.feed(chunk)
        restore.finish()
