"""node.wallet_files: the wallet directory's file operations refuse every way out of it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node import wallet_files
from node.errors import InvalidPath, NotFound
from node.wallet_files import BACKUP_REQUIRED, WalletHome


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under root (links included, not followed): files → bytes, else None."""
    entries: dict[str, bytes | None] = {}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            key = path.relative_to(root).as_posix()
            entries[key] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return entries


@pytest.fixture
def root(tmp_path: Path) -> Path:
    wallet = tmp_path / "wallet" / "0badcafe"
    wallet.mkdir(parents=True)
    return wallet


def test_write_read_list_delete(root):
    wallet_files.write_file(root, "wallet.sqlite", b"\x00" * 10)
    wallet_files.write_file(root, "db/nested/state.json", b"{}")
    wallet_files.write_file(root, "db/empty", b"")
    wallet_files.write_file(root, "wallet.sqlite", b"replaced")
    assert wallet_files.read_file(root, "wallet.sqlite") == b"replaced"
    assert wallet_files.read_file(root, "db/empty") == b""
    assert wallet_files.list_files(root) == [("db/empty", 0), ("db/nested/state.json", 2), ("wallet.sqlite", 8)]
    assert wallet_files.delete_file(root, "db/nested/state.json") is True
    assert wallet_files.delete_file(root, "db/nested/state.json") is False
    assert wallet_files.delete_file(root, "never/was") is False
    # the emptied folder went with its last file; its parent still holds a file
    assert tree(root) == {"db": None, "db/empty": b"", "wallet.sqlite": b"replaced"}
    wallet_files.delete_file(root, "db/empty")
    assert tree(root) == {"wallet.sqlite": b"replaced"}
    with pytest.raises(NotFound):
        wallet_files.read_file(root, "db/empty")
    with pytest.raises(NotFound):
        wallet_files.read_file(root, "missing/deeper/file")


def test_unicode_and_odd_but_safe_names(root):
    for name in ("café", "with space", "..hidden", "a..b", ".dot", "x:y", "%2e%2e"):
        wallet_files.write_file(root, f"dir/{name}", name.encode())
        assert wallet_files.read_file(root, f"dir/{name}") == name.encode()


ESCAPES = [
    "",
    "/etc/passwd",
    "//etc/passwd",
    "..",
    "../outside",
    "a/../../outside",
    "a/./b",
    ".",
    "a//b",
    "dir/",
    "a\x00b",
    "..\\outside",
    "a\\..\\..\\outside",
    "C:\\outside",
    wallet_files.TEMP_PREFIX + "x",
    "n" * 256,
    "a/" * 2100 + "b",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_escaping_paths_are_refused_and_write_nothing(tmp_path, root, path):
    before = tree(tmp_path)
    called = []
    with pytest.raises(InvalidPath):
        wallet_files.write_file(root, path, b"x", before_commit=lambda: called.append(1))
    with pytest.raises(InvalidPath):
        wallet_files.read_file(root, path)
    with pytest.raises(InvalidPath):
        wallet_files.delete_file(root, path, before_commit=lambda: called.append(1))
    assert tree(tmp_path) == before and called == []


def test_symlinks_on_the_way_or_as_target_are_refused(tmp_path, root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not touch")
    (root / "out").symlink_to(outside)  # a folder link pointing out
    (root / "inner").mkdir()
    (root / "in").symlink_to(root / "inner")  # even a link that stays inside
    (root / "file_link").symlink_to(outside / "secret")  # a file link pointing out
    before = tree(tmp_path)
    called = []
    for path in ("out/secret", "out/new", "out/deeper/new", "in/new", "file_link"):
        with pytest.raises(InvalidPath, match="symbolic link"):
            wallet_files.write_file(root, path, b"x", before_commit=lambda: called.append(1))
        with pytest.raises(InvalidPath, match="symbolic link"):
            wallet_files.read_file(root, path)
        with pytest.raises(InvalidPath, match="symbolic link"):
            wallet_files.delete_file(root, path, before_commit=lambda: called.append(1))
    assert tree(tmp_path) == before and called == []
    assert (outside / "secret").read_bytes() == b"do not touch"
    assert wallet_files.list_files(root) == []  # links are not listed, nor followed


def test_files_and_folders_do_not_stand_in_for_each_other(root):
    wallet_files.write_file(root, "a/b", b"1")
    with pytest.raises(InvalidPath, match="is a folder"):
        wallet_files.write_file(root, "a", b"x")
    with pytest.raises(InvalidPath, match="is a folder"):
        wallet_files.delete_file(root, "a")
    with pytest.raises(InvalidPath, match="not a folder"):
        wallet_files.write_file(root, "a/b/c", b"x")
    with pytest.raises(NotFound):
        wallet_files.read_file(root, "a")
    assert tree(root) == {"a": None, "a/b": b"1"}


def test_before_commit_runs_only_for_real_changes(root):
    calls = []
    wallet_files.write_file(root, "f", b"1", before_commit=lambda: calls.append("write"))
    assert wallet_files.delete_file(root, "absent", before_commit=lambda: calls.append("no")) is False
    wallet_files.delete_file(root, "f", before_commit=lambda: calls.append("delete"))
    assert calls == ["write", "delete"]


def test_a_failing_hook_leaves_the_old_file(root):
    wallet_files.write_file(root, "f", b"old")

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        wallet_files.write_file(root, "f", b"new", before_commit=fail)
    assert tree(root) == {"f": b"old"}


def test_temp_files_of_a_crash_are_swept_and_never_listed(root):
    wallet_files.write_file(root, "d/f", b"data")
    (root / "d" / (wallet_files.TEMP_PREFIX + "dead")).write_bytes(b"half")
    assert wallet_files.list_files(root) == [("d/f", 4)]
    assert wallet_files.remove_temp_files(root) == 1
    assert tree(root) == {"d": None, "d/f": b"data"}


def test_home_layout_and_marker(tmp_path):
    home = WalletHome(tmp_path, "0badcafe")
    assert home.root == tmp_path / "wallet" / "0badcafe"
    assert not home.exists() and not home.flag(BACKUP_REQUIRED)
    home.create_empty()
    assert home.exists() and list(home.root.iterdir()) == []
    home.set_flag(BACKUP_REQUIRED, True)
    home.set_flag(BACKUP_REQUIRED, True)
    assert home.flag(BACKUP_REQUIRED)
    markers = [p for p in home.parent.iterdir() if p.name.startswith(".")]
    assert markers and not any(m.is_relative_to(home.root) for m in markers)  # never inside what is backed up
    home.set_flag(BACKUP_REQUIRED, False)
    home.set_flag(BACKUP_REQUIRED, False)
    assert not home.flag(BACKUP_REQUIRED)
    (home.parent / ".0badcafe.restore-abc").mkdir()
    home.work_dir.mkdir()
    (home.work_dir / "wallet-restore-1.zip").write_bytes(b"x")
    home.remove_leftovers()
    assert sorted(p.name for p in home.parent.iterdir()) == ["0badcafe"]
