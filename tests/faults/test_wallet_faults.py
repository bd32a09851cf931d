"""Scenarios 10 and 11: the wallet stream under a takeover and under SIGKILL.

The wallet directory goes to the server as one sealed backup (docs/FORMAT.md): in one
putObjects when it fits a request (atomic: the server holds the old backup or the new
one), piece by piece otherwise (the server can hold a mix for a while, and the node
says so). These scenarios run real node processes against a server of their own, whose
`--max-body-bytes` decides which way a wallet of a few MiB goes, and check what a fresh
data dir would restore with the node's own restore code (`checker.server_wallet`).
"""

from __future__ import annotations

import random

import pytest
import trio

from node.errors import RestoreFailed
from node.keys import NodeKeys, derive_keys, generate_mnemonic
from nodeutil import client_for, wait_for

from .checker import api_wallet, assert_same, local_copy, server_copy, server_wallet, wallet_name
from .harness import PASSWORD, scaled
from .nodeproc import NodeProcess, node_fleet
from .proxy import CallRecord, running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

MiB = 1024 * 1024
# Under this the bundled server refuses a request with 413: a wallet of a few MiB cannot
# go in one putObjects, so the node uploads it piece by piece (1 MiB pieces fit).
PIECE_BY_PIECE_LIMIT = 1536 * 1024
PIECE_BYTES = 512 * 1024  # a putObjects body larger than this carries a wallet piece
DEADLINE_S = scaled(180, 900)
KILL_ROUNDS = scaled(6, 30)


def _puts_forwarded_after(calls: list[CallRecord], moment: float) -> list[CallRecord]:
    return [call for call in calls if call.name == "putObjects" and call.forwarded_at > moment]


async def _write_wallet(node: NodeProcess, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        await node.expect(204, "PUT", f"/wallet/files/{path}", content=data)


async def _state_is(node: NodeProcess, state: str) -> bool:
    return (await node.nodeinfo())["state"] == state


async def _pending_is(node: NodeProcess, wanted: int) -> bool:
    return await node.pending() == wanted


async def test_takeover_during_the_old_owners_wallet_upload(tmp_path, spawn_vss_server, report):
    """Fault: node A has a backed-up wallet and then writes an 8 MiB wallet file; its
    upload goes piece by piece (the server refuses bodies over 1.5 MiB) through a link
    with 400 ms of latency per call. Two pieces in, A's next piece is held at its link
    (read, not forwarded) while node B (a fresh data dir, same mnemonic, on a link of
    its own) clears the fence and unlocks; then A's upload goes on. Later B changes
    the wallet and backs it up.

    Expected: not one more wallet piece of A lands after B's takeover: every
    putObjects of A forwarded after B's acquire of the wallet store was answered (B's
    second write of its unlock, after the KV store's, as B's link records it) is
    refused (409), and the server's wallet keys do not change between B's unlock and
    A being fenced; B restored A's last whole backup byte for byte; B's backup is what the server then
    holds, and a fresh data dir restores it byte for byte; A ends `fenced` in
    /nodeinfo, answers 409 OwnershipLost to KV and wallet writes, still serves reads;
    the server's KV copy equals B's local one.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    server = spawn_vss_server("--max-body-bytes", str(PIECE_BY_PIECE_LIMIT))
    old_wallet = {"state.json": b'{"height": 1}', "db/small.bin": rng.randbytes(300_000)}
    big = rng.randbytes(8 * MiB)
    with trio.fail_after(DEADLINE_S):
        async with (
            running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as link_a,
            running_proxy(server.url.removesuffix("/vss"), seed=report.seed + 1) as link_b,
            node_fleet(tmp_path) as fleet,
        ):
            link_a.record_calls = link_b.record_calls = True
            a = fleet.node("a", link_a.url + "/vss")
            b = fleet.node("b", link_b.url + "/vss")
            await a.start()
            await b.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            for i in range(10):
                await a.expect(204, "PUT", f"/kv/k{i}", params={"primary": "a"}, content=b"A%d" % i)
            await _write_wallet(a, old_wallet)
            old_version = (await a.expect(200, "POST", "/vssbackup")).json()["version"]
            await wait_for(lambda: _pending_is(a, 0), timeout=30, what="A's KV writes replicated")
            assert await server_wallet(server.url, keys, tmp_path / "scratch") == old_wallet
            await b.init(PASSWORD, mnemonic)

            link_a.latency_ms = 400
            big_written = trio.current_time()
            await a.expect(204, "PUT", "/wallet/files/db/big.bin", content=big)

            def pieces_landed() -> int:
                return sum(1 for c in link_a.calls if c.forwarded_at > big_written and c.body_bytes > PIECE_BYTES
                           and c.status == 200)

            await wait_for(lambda: pieces_landed() >= 2, timeout=60, what="two pieces of A's upload on the server")
            link_a.hold_bodies_over(PIECE_BYTES)
            await wait_for(lambda: link_a.held == 1, timeout=30, what="A's next piece held at its link")
            cleared = (await b.clear_fence(PASSWORD))["cleared"]
            cleared_at = trio.current_time()
            await b.unlock(PASSWORD)
            b_acquires = _puts_forwarded_after(link_b.calls, cleared_at)
            assert [c.status for c in b_acquires] == [200, 200], f"B's unlock wrote {b_acquires}, not its two acquires"
            taken_over = b_acquires[-1].answered_at
            pieces_before_takeover = sum(1 for c in link_a.calls if c.forwarded_at > big_written and c.body_bytes > PIECE_BYTES
                                         and c.status == 200 and c.answered_at <= taken_over)
            at_takeover = await _wallet_key_versions(server.url, keys)
            restored_by_b = await api_wallet(b)
            a_pieces_on_server = sorted(k for k in at_takeover if k.startswith("backup/chunk/"))
            link_a.release_held()
            await wait_for(lambda: _state_is(a, "fenced"), timeout=60, what="A fenced")
            after_fenced = await _wallet_key_versions(server.url, keys)

            a_late = _puts_forwarded_after(link_a.calls, taken_over)
            link_a.heal()
            kv_refused = await a.put("k0", b"A:late", "a")
            wallet_refused = await a.request("PUT", "/wallet/files/late.bin", content=b"late")
            for response in (kv_refused, wallet_refused):
                assert response.status_code == 409 and response.json()["name"] == "OwnershipLost", response.text
            assert (await a.expect(200, "GET", "/kv/k3", params={"primary": "a"})).content == b"A3"
            assert (await a.expect(200, "GET", "/wallet/files/db/big.bin")).content == big
            a_info = await a.backup_info()

            b_wallet = {**old_wallet, "state.json": b'{"height": 2}', "db/b.bin": rng.randbytes(3 * MiB)}
            await _write_wallet(b, b_wallet)
            for i in range(5):
                await b.expect(204, "PUT", f"/kv/b{i}", params={"primary": "b"}, content=b"B%d" % i)
            b_version = (await b.expect(200, "POST", "/vssbackup")).json()["version"]
            await wait_for(lambda: _pending_is(b, 0), timeout=30, what="B's KV writes replicated")
            assert await api_wallet(b) == b_wallet
            restored = await server_wallet(server.url, keys, tmp_path / "scratch")
            await b.lock()
            await b.stop()
            c = fleet.node("c", server.url)
            await c.start()
            await c.init(PASSWORD, mnemonic)
            await c.clear_fence(PASSWORD)
            await c.unlock(PASSWORD)
            restored_by_c = await api_wallet(c)
            await c.lock()

            report.set(
                wallet_bytes=len(big),
                pieces_of_a_before_takeover=pieces_before_takeover,
                a_pieces_on_server_at_takeover=len(a_pieces_on_server),
                a_puts_after_takeover=len(a_late),
                a_puts_after_takeover_landed=sum(1 for c in a_late if c.status == 200),
                old_backup_version=old_version,
                b_backup_version=b_version,
                clear_fence_cleared=int(cleared),
            )
            report.add_proxy(link_a.figures())
            assert a_late, "A sent no piece after the takeover"
            assert a_pieces_on_server, "no piece of A's new backup was on the server at the takeover"
            assert [c.status for c in a_late if c.status == 200] == [], f"A's writes landed after the takeover: {a_late}"
            assert after_fenced == at_takeover, "the server's wallet keys changed after the takeover, before B wrote"
            assert restored_by_b == old_wallet, "B did not restore A's last whole backup"
            assert a_info["fenced"] is True, a_info
            assert restored == b_wallet, "the server's wallet backup is not B's"
            assert restored_by_c == b_wallet, "a fresh data dir did not restore B's wallet"
            assert_same(await server_copy(server.url, keys), local_copy(b.data_dir), "server vs the new owner B")


async def _wallet_key_versions(url: str, keys: NodeKeys) -> dict[str, int]:
    """Every key of the wallet store with its version: any write changes a version."""
    async with client_for(url, keys) as client:
        return {item.key: item.version async for item in client.iter_key_versions(keys.wallet_store_id)}


async def test_takeover_while_the_old_owners_atomic_upload_is_in_flight(tmp_path, vss_server, report):
    """Fault: node A writes a 3 MiB wallet file; its upload (one putObjects of every
    piece and document) is held at A's link — read, not yet forwarded — while node B
    (fresh data dir, same mnemonic) clears the fence and unlocks. Then the held request
    goes on to the server.

    Expected: the server refuses it (409): A's backup does not land over the takeover,
    and no key of the wallet store changes; A ends `fenced`; B restored A's last whole
    backup, and that is what a fresh data dir restores, byte for byte.
    """
    rng = random.Random(report.seed)
    mnemonic = generate_mnemonic()
    keys = derive_keys(mnemonic)
    old_wallet = {"state.json": b'{"height": 1}'}
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as link_a, node_fleet(tmp_path) as fleet:
            link_a.record_calls = True
            a = fleet.node("a", link_a.url + "/vss")
            b = fleet.node("b", vss_server.url)
            await a.start()
            await b.start()
            await a.init(PASSWORD, mnemonic)
            await a.unlock(PASSWORD)
            await _write_wallet(a, old_wallet)
            await a.expect(200, "POST", "/vssbackup")
            await b.init(PASSWORD, mnemonic)
            link_a.hold_bodies_over(PIECE_BYTES)
            await a.expect(204, "PUT", "/wallet/files/db/big.bin", content=rng.randbytes(3 * MiB))
            await wait_for(lambda: link_a.held == 1, timeout=30, what="A's upload held at its link")
            await b.clear_fence(PASSWORD)
            await b.unlock(PASSWORD)
            at_takeover = await _wallet_key_versions(vss_server.url, keys)
            link_a.release_held()
            big_puts = lambda: [c for c in link_a.calls if c.name == "putObjects" and c.body_bytes > PIECE_BYTES]  # noqa: E731
            await wait_for(lambda: len(big_puts()) == 1, timeout=30, what="the held upload forwarded")
            await wait_for(lambda: _state_is(a, "fenced"), timeout=60, what="A fenced")
            after = await _wallet_key_versions(vss_server.url, keys)
            restored_by_b = await api_wallet(b)
            restored = await server_wallet(vss_server.url, keys, tmp_path / "scratch")
            held_status = big_puts()[0].status
            report.set(held_upload_bytes=big_puts()[0].body_bytes, held_upload_status=held_status)
            report.add_proxy(link_a.figures())
            assert held_status == 409, f"A's upload, held over the takeover, was answered {held_status}"
            assert after == at_takeover, "the wallet store changed after the takeover"
            assert restored_by_b == old_wallet and restored == old_wallet
            await b.lock()
            assert_same(await server_copy(vss_server.url, keys), local_copy(b.data_dir), "server vs B")


class KillRounds:
    """Scenario 11's rounds: node A uploads a new wallet over its previous backup and is
    SIGKILLed at a seeded moment; then what a fresh data dir would restore is checked,
    and A is restarted with its re-upload held at the proxy, so its /vssbackupinfo can
    be read before the next whole upload lands."""

    def __init__(self, tmp_path, report, server_url: str, wallet_bytes: tuple[int, int], *, piece_by_piece: bool) -> None:
        self.tmp_path = tmp_path
        self.report = report
        self.server_url = server_url
        self.wallet_bytes = wallet_bytes  # each round's size is drawn from this range: pieces come and go
        self.sizes: list[int] = []
        self.piece_by_piece = piece_by_piece
        self.rng = random.Random(report.seed)
        self.mnemonic = generate_mnemonic()
        self.keys = derive_keys(self.mnemonic)
        self.outcomes: dict[str, int] = {"old": 0, "new": 0, "not restorable": 0}
        self.kill_delays: list[float] = []
        # Reads of "backup_restorable": false after a kill that left no whole backup, before
        # the node said true again (the read while held, and polls during the re-upload).
        self.restorable_false_reads = 0
        self._seen_whole = False
        self.round = 0

    def wallet(self, number: int) -> dict[str, bytes]:
        size = self.rng.randint(*self.wallet_bytes)
        self.sizes.append(size)
        data = f"wallet round {number}:".encode() + self.rng.randbytes(size)
        return {"state.json": b'{"kind": "kill rounds"}', "db/big.bin": data}

    async def restored(self) -> dict[str, bytes] | None | RestoreFailed:
        try:
            return await server_wallet(self.server_url, self.keys, self.tmp_path / "scratch")
        except RestoreFailed as exc:
            return exc

    async def run(self, link, fleet, rounds: int, upload_latency_ms: float, deterministic_mix: bool) -> None:
        a = fleet.node("a", link.url + "/vss")
        await a.start()
        await a.init(PASSWORD, self.mnemonic)
        await a.unlock(PASSWORD)
        current = self.wallet(0)
        await a.expect(204, "PUT", "/wallet/files/state.json", content=current["state.json"])
        await self._landed(a)
        link.latency_ms = upload_latency_ms
        started = trio.current_time()
        await a.expect(204, "PUT", "/wallet/files/db/big.bin", content=current["db/big.bin"])
        await self._landed(a)
        upload_s = trio.current_time() - started
        assert await self.restored() == current, "the first upload does not restore"
        self.report.set(uninterrupted_upload_s=round(upload_s, 2))

        for number in range(1, rounds + 1):
            self.round = number
            new = self.wallet(number)
            await a.expect(204, "PUT", f"/kv/round{number}", params={"primary": "w"}, content=b"%d" % number)
            link.latency_ms = upload_latency_ms
            written = trio.current_time()
            await a.expect(204, "PUT", "/wallet/files/db/big.bin", content=new["db/big.bin"])
            if deterministic_mix and number == 1:
                await self._kill_between_pieces(a, link, written)
            else:
                delay = self.rng.uniform(0.0, upload_s * 1.2)
                self.kill_delays.append(delay)
                await trio.sleep(delay)  # the kill's moment: chosen by the seed, not a wait for anything
                await a.kill()
            await wait_for(lambda: link.in_flight == 0, timeout=30, what="the dead node's requests to settle")
            found = await self.restored()
            outcome = self._judge(found, current, new)
            self.outcomes[outcome] += 1

            link.latency_ms = 0
            link.hold_bodies_over(PIECE_BYTES)
            await a.start()
            await a.unlock(PASSWORD)
            await wait_for(lambda: _holding_or_clean(a, link), timeout=30, what="A's re-upload to reach the proxy")
            info = await a.backup_info()
            if outcome == "not restorable":
                assert info["backup_restorable"] is False, f"round {number}: the server's backup does not restore: {info}"
                self.restorable_false_reads += 1
                assert isinstance(await self.restored(), RestoreFailed), "the server's backup changed while held"
            elif not self.piece_by_piece:
                assert info["backup_restorable"] is True, f"round {number}: an atomic upload left {info}"
            link.release_held()
            await self._landed(a, after_a_mix=new if outcome == "not restorable" else None)
            assert await self.restored() == new, f"round {number}: after the re-upload landed, a restore is not the new wallet"
            current = new

        await wait_for(lambda: _pending_is(a, 0), timeout=60, what="A's KV writes replicated")
        await a.lock()
        await a.stop()
        assert_same(await server_copy(self.server_url, self.keys), local_copy(a.data_dir), "server vs A")
        c = fleet.node("fresh", self.server_url)
        await c.start()
        await c.init(PASSWORD, self.mnemonic)
        await c.clear_fence(PASSWORD)
        await c.unlock(PASSWORD)
        assert await api_wallet(c) == current, "a fresh data dir does not restore the last wallet"
        await c.lock()
        assert_same(await server_copy(self.server_url, self.keys), local_copy(c.data_dir), "server vs the fresh data dir")
        self.report.set(
            rounds=rounds,
            kills=fleet.kills,
            wallet_bytes_min=min(self.sizes),
            wallet_bytes_max=max(self.sizes),
            restored_old_after_kill=self.outcomes["old"],
            restored_new_after_kill=self.outcomes["new"],
            not_restorable_after_kill=self.outcomes["not restorable"],
            restorable_false_reads=self.restorable_false_reads,
            kill_delay_min_s=round(min(self.kill_delays), 2),
            kill_delay_max_s=round(max(self.kill_delays), 2),
        )
        self.report.add_proxy(link.figures())

    def _judge(self, found, old: dict[str, bytes], new: dict[str, bytes]) -> str:
        if isinstance(found, RestoreFailed):
            assert self.piece_by_piece, f"round {self.round}: an atomic upload killed left no whole backup: {found}"
            return "not restorable"
        name = wallet_name(found, {"old": old, "new": new})
        assert name in ("old", "new"), f"round {self.round}: a fresh data dir restored {name}, neither old nor new"
        return name

    async def _kill_between_pieces(self, a: NodeProcess, link, written: float) -> None:
        """Kill A with some new pieces on the server and the rest not: hold the upload
        once two pieces landed, kill A, then let the held piece through (it lands: the
        dead node still owned the store) — its documents never follow."""

        def pieces_landed() -> int:
            return sum(1 for c in link.calls if c.forwarded_at > written and c.body_bytes > PIECE_BYTES and c.status == 200)

        await wait_for(lambda: pieces_landed() >= 2, timeout=60, what="two pieces of the upload on the server")
        link.hold_bodies_over(PIECE_BYTES)
        await wait_for(lambda: link.held >= 1, timeout=30, what="the next piece held")
        await a.kill()
        link.release_held()
        self.kill_delays.append(trio.current_time() - written)

    async def _landed(self, a: NodeProcess, *, after_a_mix: dict[str, bytes] | None = None) -> None:
        """Wait for the wallet upload to land (the marker cleared). After a kill that
        left the server without a whole backup (`after_a_mix`: the wallet being
        re-uploaded), the node may say `backup_restorable: true` only once the new
        upload's documents are on the server: every poll that says so is checked with
        a restore, which must give that wallet (the server's state only moves forward)."""

        async def done() -> bool:
            info = await a.backup_info()
            if after_a_mix is not None and info["backup_restorable"] is True and not self._seen_whole:
                found = await self.restored()
                assert found == after_a_mix, f"round {self.round}: said restorable while the server held {found!r}: {info}"
                self._seen_whole = True
            if info["backup_required"]:
                if after_a_mix is not None and not self._seen_whole:
                    self.restorable_false_reads += info["backup_restorable"] is False
                return False
            return info["backup_restorable"] is True

        self._seen_whole = False
        await wait_for(done, timeout=90, what="the wallet upload to land")


async def _holding_or_clean(a: NodeProcess, link) -> bool:
    """A's re-upload is held at the proxy, or A owes no upload at all."""
    return link.held >= 1 or not (await a.backup_info())["backup_required"]


async def test_sigkill_during_atomic_wallet_uploads(tmp_path, spawn_vss_server, report):
    """Fault: node A uploads a wallet of 2-4 MiB (one putObjects: under 16 MiB and the
    server's 64 MiB body limit) over its previous backup through 200 ms of latency, and
    is SIGKILLed at a seeded moment within 1.2 times one uninterrupted upload; then
    restarted. Repeated, each round with a new size (so a backup has more or fewer
    pieces than the one before).

    Expected: after every kill a fresh data dir restores either the old wallet or the
    new one, byte for byte — never a mix, never a failure; the restarted node says
    `backup_restorable: true`; once its re-upload lands a restore gives the new
    wallet. At the end the server's KV copy equals A's, and a real fresh data dir
    (fence cleared) restores the last wallet.
    """
    server = spawn_vss_server()
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as link, node_fleet(tmp_path) as fleet:
            link.record_calls = True
            rounds = KillRounds(tmp_path, report, server.url, (2 * MiB, 4 * MiB), piece_by_piece=False)
            await rounds.run(link, fleet, KILL_ROUNDS, upload_latency_ms=200, deterministic_mix=False)
            puts = [c for c in link.calls if c.name == "putObjects" and c.body_bytes > PIECE_BYTES]
            assert puts and all(c.body_bytes > 2 * MiB for c in puts), "the wallet did not go in one putObjects"


async def test_sigkill_during_piece_by_piece_wallet_uploads(tmp_path, spawn_vss_server, report):
    """Fault: as above with wallets of 3-5 MiB and a server that refuses bodies over
    1.5 MiB (413), so every upload goes piece by piece (four to six 1 MiB pieces, then
    the manifest, metadata and fingerprint, then the deletion of pieces the new
    manifest no longer names) over the previous chunked backup, 150 ms of latency per
    call. The first kill is placed between two pieces (the upload is held at the proxy
    once two pieces landed); the others at seeded moments.

    Expected: after every kill a fresh data dir restores the old or the new wallet
    byte for byte, or — the upload had overwritten some pieces of the previous backup
    — nothing restores; then, and until the next whole upload lands, the restarted
    node's /vssbackupinfo says `"backup_restorable": false` (read while its re-upload
    is held at the proxy; polled while it runs, and the first poll that says `true`
    is checked at once with a restore, which must give the new wallet); once it lands
    a restore gives the new wallet.
    """
    server = spawn_vss_server("--max-body-bytes", str(PIECE_BY_PIECE_LIMIT))
    with trio.fail_after(DEADLINE_S):
        async with running_proxy(server.url.removesuffix("/vss"), seed=report.seed) as link, node_fleet(tmp_path) as fleet:
            link.record_calls = True
            rounds = KillRounds(tmp_path, report, server.url, (3 * MiB, 5 * MiB), piece_by_piece=True)
            await rounds.run(link, fleet, KILL_ROUNDS, upload_latency_ms=150, deterministic_mix=True)
            assert rounds.outcomes["not restorable"] >= 1, "no kill left a mix: the deterministic round did not work"
            assert max(c.body_bytes for c in link.calls if c.status == 200) < PIECE_BY_PIECE_LIMIT
