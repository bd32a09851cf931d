"""The node without VSS, through its Python API: group commit, durability across a
restart, and lock racing in-flight writes."""

from __future__ import annotations

import anyio
import pytest

from actors import Node, NodeState
from node import errors
from node.config import NodeConfig
from nodeutil import FAST_LIMITS, MNEMONIC_A

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_concurrent_writes_share_transactions_and_survive_a_restart(tmp_path):
    cfg = NodeConfig(data_dir=tmp_path / "n", vault_limits=FAST_LIMITS)
    async with Node.open(cfg) as node:
        await node.init("pw", MNEMONIC_A)
        await node.unlock("pw")
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(node.put, "ns", "", f"k{i}", b"%d" % i)
        commits = node.metrics.value("local_commits_total")
        assert 1 <= commits < 200  # group commit: fewer transactions than writes
        assert node.metrics.value("pending_kv_writes") == 0  # VSS off: no markers at all
    async with Node.open(cfg) as node:
        assert node.state is NodeState.LOCKED
        await node.unlock("pw")
        assert len(await node.list_keys("ns", "")) == 200
        assert await node.get("ns", "", "k199") == b"199"


async def test_lock_during_writes_answers_every_writer(tmp_path):
    """Every write racing a lock either committed (and is there afterwards) or was
    refused with NodeLocked; none is left waiting."""
    cfg = NodeConfig(data_dir=tmp_path / "n", vault_limits=FAST_LIMITS)
    outcomes: dict[str, str] = {}

    async def writer(node: Node, key: str) -> None:
        try:
            await node.put("ns", "", key, b"v")
            outcomes[key] = "ok"
        except errors.NodeLocked:
            outcomes[key] = "refused"

    async with Node.open(cfg) as node:
        await node.init("pw", MNEMONIC_A)
        await node.unlock("pw")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(300):
                    tg.start_soon(writer, node, f"k{i}")
                tg.start_soon(node.lock)
        assert len(outcomes) == 300
        await node.unlock("pw")
        stored = set(await node.list_keys("ns", ""))
        assert stored == {k for k, v in outcomes.items() if v == "ok"}


async def test_wrong_state_calls_are_refused(tmp_path):
    async with Node.open(NodeConfig(data_dir=tmp_path / "n", vault_limits=FAST_LIMITS)) as node:
        with pytest.raises(errors.NotInitialized):
            await node.unlock("pw")
        with pytest.raises(errors.NotInitialized):
            await node.put("ns", "", "k", b"v")
        await node.init("pw", MNEMONIC_A)
        with pytest.raises(errors.NodeLocked):
            await node.lock()
        with pytest.raises(errors.WrongPassword):
            await node.unlock("wrong")
        assert node.state is NodeState.LOCKED
        await node.unlock("pw")
        with pytest.raises(errors.NodeNotLocked):
            await node.unlock("pw")
