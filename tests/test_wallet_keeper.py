"""The wallet keeper and its uploader against the in-memory server, on MockClock.

The ownership-guard is a stand-in that puts the wallet store's writes straight onto the
fake server (or reports the fence lost), and records each put with the markers as they
were when it arrived. What the server holds is always restored back and compared with
the wallet directory, file by file.
"""

from __future__ import annotations

import logging
import os
import re

import anyio
import pytest

import actors.wallet_upload
from actors.messages import BackupNow, OweWallet, StoreKind
from actors.ownership_guard import FenceLost
from actorutil import WalletRig, eventually, none_within, thread_aware_clock
from guardutil import keys
from node import errors, wallet_files
from node.wallet_files import BACKUP_REQUIRED, REMOTE_INCOMPLETE, REMOTE_UNREADABLE
from node.wallet_format import MANIFEST_KEY
from vss.errors import RequestTooLargeError
from vss.proto.vss_pb2 import KeyValue

MiB = 1024 * 1024


@pytest.fixture
def clock(monkeypatch):
    return thread_aware_clock(monkeypatch)


def manifest_version(rig: WalletRig) -> int | None:
    row = rig.server.store(keys().wallet_store_id).rows.get(MANIFEST_KEY)
    return None if row is None else row.version


def settled(rig: WalletRig) -> bool:
    return not rig.marked(BACKUP_REQUIRED)


@pytest.mark.trio
async def test_changes_during_an_upload_coalesce_into_one_more_built_after_the_last(clock, tmp_path):
    """Situation: five changes arrive while the first upload is on its way. Expected:
    each change is answered meanwhile; the first upload lands but leaves the "backup
    required" marker set (it was built before them); exactly one more upload follows,
    built after the last change, and only it clears the marker. The server then holds
    the directory as it is."""
    rig = WalletRig(tmp_path)
    first = rig.port.pause_before("put_objects")
    second = rig.port.pause_before("put_objects")
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"first")
            await first.reached.wait()
            for i in range(5):
                await rig.change(f"dir/f{i}", f"change {i}".encode())
            assert rig.marked(BACKUP_REQUIRED)
            first.release()
            await second.reached.wait()  # the first landed; the second is built and on its way
            assert rig.keeper.status.uploads == 1 and manifest_version(rig) == 1
            assert rig.marked(BACKUP_REQUIRED)
            second.release()
            await eventually(lambda: settled(rig), "the second upload cleared the marker")
            await none_within(600, lambda: rig.guard.wait_puts(3), "a third upload")
            tg.cancel_scope.cancel()
    assert len(rig.uploads()) == 2 and rig.keeper.status.uploads == 2
    assert await rig.server_files() == rig.local_files() == {
        "a.txt": b"first", **{f"dir/f{i}": f"change {i}".encode() for i in range(5)}
    }


@pytest.mark.trio
async def test_a_failed_upload_is_retried_with_backoff_without_a_new_change(clock, tmp_path):
    """Fault: the server is down for nine attempts. Expected: after one change the
    upload is tried again and again with no further change, 1 s, 2 s, 4 s ... doubling
    to 60 s and then every 60 s; once the server is back the next attempt lands and
    clears the marker; each failure is counted."""
    rig = WalletRig(tmp_path)
    rig.port.down = True
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"v")
            await eventually(lambda: rig.keeper.status.failures == 9, "nine attempts failed", step=0.5)
            rig.port.down = False
            await eventually(lambda: settled(rig), "the retry landed", step=0.5)
            tg.cancel_scope.cancel()
    attempts = rig.port.call_times["list_key_versions"]
    assert [round(b - a, 6) for a, b in zip(attempts, attempts[1:], strict=False)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert rig.keeper.status.failures == 9 and rig.metrics.value("wallet_backup_failures_total") == 9
    assert rig.keeper.status.uploads == 1 and rig.keeper.status.last_error is None
    assert await rig.server_files() == {"a.txt": b"v"}


@pytest.mark.trio
async def test_an_outage_logs_one_line_when_it_starts_and_one_when_a_backup_lands(clock, tmp_path, caplog):
    """Fault: the server is down for nine attempts (three minutes of backoff). Expected:
    one warning when the first attempt fails, none for the next eight, one line when
    the tenth lands saying how many failed and for how long; the next upload is logged
    as usual."""
    caplog.set_level(logging.INFO, logger="actors.wallet_keeper")
    rig = WalletRig(tmp_path)
    rig.port.down = True
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"v")
            await eventually(lambda: rig.keeper.status.failures == 9, "nine attempts failed", step=0.5)
            rig.port.down = False
            await eventually(lambda: settled(rig), "the retry landed", step=0.5)
            await rig.change("b.txt", b"w")
            await eventually(lambda: settled(rig) and rig.keeper.status.uploads == 2, "the next upload", step=0.5)
            tg.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.wallet_keeper"]
    assert len(lines) == 3, lines
    assert lines[0].startswith("wallet backups are failing (VssUnavailableError: injected: the server is down"), lines
    back = re.fullmatch(r"wallet backups work again: manifest version 1 uploaded after 9 failed attempts in (\S+) s",
                        lines[1])
    assert back is not None and float(back.group(1)) == pytest.approx(1 + 2 + 4 + 8 + 16 + 32 + 60 + 60 + 60), lines
    assert lines[2] == "wallet backup uploaded: manifest version 2"


@pytest.mark.trio
async def test_backup_now_waits_for_an_upload_built_after_it_arrived(clock, tmp_path):
    """Situation: BackupNow arrives while an upload (built before it) is in flight.
    Expected: that upload's landing does not answer it; a new upload is built and the
    caller gets its manifest version."""
    rig = WalletRig(tmp_path)
    first = rig.port.pause_before("put_objects")
    second = rig.port.pause_before("put_objects")
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"v")
            await first.reached.wait()
            request = BackupNow()
            await rig.inbox.send(request)  # taken before the first upload's UploadDone
            first.release()
            await second.reached.wait()
            assert manifest_version(rig) == 1 and not request.reply.done
            second.release()
            version = await request.reply.wait()
            tg.cancel_scope.cancel()
    assert version == 2 == manifest_version(rig)


@pytest.mark.trio
async def test_an_unreadable_remote_backup_is_never_uploaded_over_unless_asked(clock, tmp_path):
    """Situation: the restore could not read the server's wallet backup (the operator
    let the node start empty). Expected: changes never upload it over automatically,
    however long; BackupNow fails with WalletBackupUnreadable; BackupNow with
    replace_unreadable uploads, clears the marker, and from then on changes upload as
    usual."""
    rig = WalletRig(tmp_path, flags=(REMOTE_UNREADABLE,))
    unreadable = KeyValue(key=MANIFEST_KEY, version=0, value=b"a manifest this node could not read")
    rig.server.apply_put(keys().wallet_store_id, [unreadable], [], None)
    with anyio.fail_after(10_000):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"1")
            await rig.change("b.txt", b"2")
            await none_within(3600, lambda: rig.guard.wait_puts(1), "an upload over the unreadable backup")
            assert rig.marked(BACKUP_REQUIRED)
            with pytest.raises(errors.WalletBackupUnreadable):
                await rig.backup_now()
            version = await rig.backup_now(replace_unreadable=True)
            assert version == 2 == manifest_version(rig)
            assert not rig.marked(REMOTE_UNREADABLE) and settled(rig)
            await rig.change("c.txt", b"3")
            await eventually(lambda: settled(rig), "the next change uploaded by itself")
            tg.cancel_scope.cancel()
    assert len(rig.uploads()) == 2
    assert await rig.server_files() == {"a.txt": b"1", "b.txt": b"2", "c.txt": b"3"}


@pytest.mark.trio
async def test_an_unreadable_mark_is_dropped_when_the_server_holds_no_backup(clock, tmp_path):
    """Situation: marked unreadable, but the server turns out to hold no wallet backup
    at all. Expected: there is nothing to protect: the mark is dropped and the pending
    change is uploaded by itself."""
    rig = WalletRig(tmp_path, flags=(REMOTE_UNREADABLE, BACKUP_REQUIRED))
    wallet_files.write_file(rig.home.root, "a.txt", b"1")
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await eventually(lambda: settled(rig), "uploaded")
            tg.cancel_scope.cancel()
    assert not rig.marked(REMOTE_UNREADABLE)
    assert await rig.server_files() == {"a.txt": b"1"}


@pytest.mark.trio
async def test_owe_wallet_uploads_a_clean_wallet_again(clock, tmp_path):
    """Situation: the wallet is in sync (no marker) when the guard finds the server lost
    the wallet store. Expected: nothing uploads before; OweWallet marks it and the
    wallet is uploaded whole."""
    rig = WalletRig(tmp_path)
    wallet_files.write_file(rig.home.root, "a.txt", b"1")
    wallet_files.write_file(rig.home.root, "sub/b.txt", b"2")
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await none_within(600, lambda: rig.guard.wait_puts(1), "an upload of a clean wallet")
            await rig.inbox.send(OweWallet())
            await eventually(lambda: rig.keeper.status.uploads == 1 and settled(rig), "uploaded")
            tg.cancel_scope.cancel()
    assert await rig.server_files() == {"a.txt": b"1", "sub/b.txt": b"2"}


@pytest.mark.trio
async def test_backup_now_waiting_on_an_upload_that_finds_the_fence_lost_is_answered(clock, tmp_path):
    """Fault: BackupNow arrives while an upload is in flight, and that upload finds the
    store taken over. Expected: the request fails with OwnershipLost at once (no later
    upload will ever come to answer it), rather than waiting until the node is locked."""
    rig = WalletRig(tmp_path)
    in_flight = rig.port.pause_before("put_objects")
    rig.port.fail_next("put_objects", FenceLost("injected: taken over"))
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"v")
            await in_flight.reached.wait()
            request = BackupNow()
            await rig.inbox.send(request)  # taken before the upload's UploadDone: it needs the next round
            in_flight.release()
            with pytest.raises(errors.OwnershipLost):
                await request.reply.wait()
            tg.cancel_scope.cancel()
    assert rig.keeper.status.stopped is not None and len(rig.uploads()) == 1


@pytest.mark.trio
async def test_after_the_fence_is_lost_nothing_more_is_uploaded(clock, tmp_path):
    """Fault: another node takes the store over after a first upload. Expected: the next
    upload is refused by the guard and the keeper stops: later changes are still
    answered and stay marked, no further upload is attempted however long it waits,
    and BackupNow fails with OwnershipLost."""
    rig = WalletRig(tmp_path)
    with anyio.fail_after(10_000):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            await rig.change("a.txt", b"1")
            await eventually(lambda: settled(rig), "first upload")
            rig.guard.lose(FenceLost("injected: taken over"))
            await rig.change("a.txt", b"2")
            await eventually(lambda: rig.keeper.status.stopped is not None, "the keeper stopped")
            attempts = len(rig.guard.of(StoreKind.WALLET))
            await rig.change("b.txt", b"3")
            await none_within(3600, lambda: rig.guard.wait_puts(attempts + 1), "an upload after FenceLost")
            with pytest.raises(errors.OwnershipLost):
                await rig.backup_now()
            tg.cancel_scope.cancel()
    assert attempts == 2 and isinstance(rig.guard.of(StoreKind.WALLET)[-1].error, FenceLost)
    assert rig.marked(BACKUP_REQUIRED)
    assert rig.local_files() == {"a.txt": b"2", "b.txt": b"3"}
    assert await rig.server_files() == {"a.txt": b"1"}


def write_large_wallet(rig: WalletRig, seed: int) -> None:
    """About 2.5 MiB that does not compress: a backup of three 1 MiB pieces."""
    wallet_files.write_file(rig.home.root, "big.bin", os.urandom(5 * MiB // 2))
    wallet_files.write_file(rig.home.root, "small.txt", f"version {seed}".encode())


def watch_incomplete(rig: WalletRig) -> list[bool]:
    """Record, for each wallet put as it arrives, whether REMOTE_INCOMPLETE was set."""
    seen: list[bool] = []
    rig.guard.before_put = lambda put: seen.append(rig.home.flag(REMOTE_INCOMPLETE))
    return seen


def put_shapes(rig: WalletRig) -> list[list[str]]:
    return [sorted(put.keys + put.deletes) for put in rig.guard.of(StoreKind.WALLET)]


DOCUMENTS = ["backup/fingerprint", "backup/manifest", "backup/metadata"]
PIECES = [f"backup/chunk/{i}" for i in range(3)]


@pytest.mark.trio
async def test_a_backup_that_fits_one_request_is_one_put(clock, tmp_path):
    """Situation: a three-piece backup within ATOMIC_MAX_BYTES, uploaded twice.
    Expected: each upload is one putObjects with every piece and document, and the
    server's backup is never marked incomplete."""
    rig = WalletRig(tmp_path)
    seen = watch_incomplete(rig)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            write_large_wallet(rig, 1)
            await rig.inbox.send(OweWallet())
            await eventually(lambda: rig.keeper.status.uploads == 1 and settled(rig))
            await rig.change("small.txt", b"version 2")
            await eventually(lambda: rig.keeper.status.uploads == 2 and settled(rig))
            tg.cancel_scope.cancel()
    assert put_shapes(rig) == [sorted(PIECES + DOCUMENTS)] * 2
    assert seen == [False, False] and not rig.marked(REMOTE_INCOMPLETE)
    assert await rig.server_files() == rig.local_files()


@pytest.mark.trio
async def test_piece_by_piece_marks_the_remote_incomplete_exactly_while_it_overwrites(clock, tmp_path, monkeypatch):
    """Situation: backups larger than one request (ATOMIC_MAX_BYTES made tiny) go piece
    by piece: each piece alone, then the documents. Expected: the first upload, onto an
    empty server, overwrites nothing and never marks the remote incomplete; the second
    overwrites the pieces of the first: REMOTE_INCOMPLETE is set before its first piece
    and stays set until its documents have landed, then it is cleared."""
    monkeypatch.setattr(actors.wallet_upload, "ATOMIC_MAX_BYTES", 1024)
    rig = WalletRig(tmp_path)
    seen = watch_incomplete(rig)
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            write_large_wallet(rig, 1)
            await rig.inbox.send(OweWallet())
            await eventually(lambda: rig.keeper.status.uploads == 1 and settled(rig))
            assert not rig.marked(REMOTE_INCOMPLETE)
            write_large_wallet(rig, 2)
            await rig.inbox.send(OweWallet())
            await eventually(lambda: rig.keeper.status.uploads == 2 and settled(rig))
            tg.cancel_scope.cancel()
    one_upload = [[piece] for piece in PIECES] + [DOCUMENTS]
    assert put_shapes(rig) == one_upload * 2
    assert seen == [False] * 4 + [True] * 4
    assert not rig.marked(REMOTE_INCOMPLETE)
    assert await rig.server_files() == rig.local_files()


@pytest.mark.trio
async def test_a_413_on_the_one_request_upload_falls_back_to_pieces(clock, tmp_path):
    """Fault: the server (or a proxy) refuses bodies over 1.5 MiB, so the one-request
    upload of a 2.5 MiB backup is refused. Expected: it goes piece by piece instead and
    the backup lands whole."""
    rig = WalletRig(tmp_path)
    rig.server.max_body_bytes = 3 * MiB // 2
    with anyio.fail_after(3600):
        async with anyio.create_task_group() as tg:
            rig.start(tg)
            write_large_wallet(rig, 1)
            await rig.inbox.send(OweWallet())
            await eventually(lambda: rig.keeper.status.uploads == 1 and settled(rig))
            tg.cancel_scope.cancel()
    puts = rig.guard.of(StoreKind.WALLET)
    assert isinstance(puts[0].error, RequestTooLargeError) and sorted(puts[0].keys) == sorted(PIECES + DOCUMENTS)
    assert put_shapes(rig)[1:] == [[piece] for piece in PIECES] + [DOCUMENTS]
    assert rig.keeper.status.failures == 0
    assert await rig.server_files() == rig.local_files()
