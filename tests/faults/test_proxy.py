"""The fault proxy itself: each fault does what it says, and the CLI works.

A VSS client that never retries calls the bundled server through the proxy with one
fault switched on at a time; the test checks the error the client sees, whether the
call reached the server (read directly), and the proxy's count for that fault.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import trio

from node.keys import derive_keys, generate_mnemonic
from vss.client import RetryPolicy, SignatureAuth, VssClient
from vss.errors import InternalServerError, NoSuchKeyError, RequestTooLargeError, VssError, VssUnavailableError
from vss.proto.vss_pb2 import KeyValue

from .nodeproc import REPO_ROOT
from .proxy import FaultRates, running_proxy

pytestmark = [pytest.mark.trio, pytest.mark.faults]

CASES = [
    # (fault, rates or mode, error the client sees, whether the server committed)
    ("error_500", FaultRates(error_500=1.0), InternalServerError, False),
    ("reset_request", FaultRates(reset_request=1.0), VssUnavailableError, False),
    ("stall_request", FaultRates(stall_request=1.0), VssUnavailableError, False),
    ("garbage", FaultRates(garbage=1.0), VssUnavailableError, True),
    ("reset_response", FaultRates(reset_response=1.0), VssUnavailableError, True),
    ("stall_response", FaultRates(stall_response=1.0), VssUnavailableError, True),
    ("drop_after_commit", FaultRates(drop_after_commit=1.0), VssUnavailableError, True),
    ("refuse", FaultRates(refuse=1.0), VssUnavailableError, False),
    ("blackhole", "blackhole", VssUnavailableError, False),
    ("down", "down", VssUnavailableError, False),
]


def _client(url: str, keys, timeout_s: float = 5.0) -> VssClient:
    return VssClient(url, SignatureAuth(keys.signing_key), retry=RetryPolicy(attempts=1), timeout_s=timeout_s)


async def _committed(server_url: str, keys, key: str) -> bool:
    async with _client(server_url, keys) as direct:
        try:
            await direct.get_object(keys.kv_store_id, key)
        except NoSuchKeyError:
            return False
        return True


async def test_each_fault_does_what_it_says(vss_server, report):
    """Each fault alone, on every request: the client sees the expected failure, the
    server has the write exactly when the fault comes after forwarding, the proxy
    counts it; then, healed, the same proxy forwards normally (and after go_down,
    go_up serves on the same port again)."""
    keys = derive_keys(generate_mnemonic())
    with trio.fail_after(60):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy:
            proxy.stall_ms = 50
            port = proxy.port
            for fault, setting, error, committed in CASES:
                key = f"proxy-{fault}"
                if setting == "blackhole":
                    proxy.blackhole = True
                elif setting == "down":
                    await proxy.go_down()
                else:
                    proxy.rates = setting
                async with _client(proxy.url + "/vss", keys, timeout_s=1.0) as client:
                    try:
                        await client.put_objects(keys.kv_store_id, [KeyValue(key=key, version=-1, value=b"v")])
                    except VssError as exc:
                        assert isinstance(exc, error), f"{fault}: {exc!r}"
                    else:
                        raise AssertionError(f"{fault}: the call succeeded")
                assert await _committed(vss_server.url, keys, key) is committed, fault
                if setting == "down":
                    assert proxy.counts["down"] == 1
                    await proxy.go_up()
                    assert proxy.port == port
                else:
                    assert proxy.counts[fault] >= 1, f"{fault}: {proxy.figures()}"
                proxy.heal()
                async with _client(proxy.url + "/vss", keys) as client:
                    await client.put_objects(keys.kv_store_id, [KeyValue(key=key + "-healed", version=-1, value=b"v")])
                assert await _committed(vss_server.url, keys, key + "-healed"), f"{fault}: not healed"
            report.set(fault_kinds_checked=len(CASES))
            report.add_proxy(proxy.figures())


async def test_latency_and_path_filter(vss_server, report):
    """Latency delays every call by at least its amount; `paths` limits the faults to
    the named calls."""
    keys = derive_keys(generate_mnemonic())
    with trio.fail_after(60):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed, latency_ms=100, jitter_ms=20) as proxy:
            async with _client(proxy.url + "/vss", keys) as client:
                started = trio.current_time()
                await client.get_global_version(keys.kv_store_id)
                assert trio.current_time() - started >= 0.1
                proxy.latency_ms = proxy.jitter_ms = 0
                proxy.rates = FaultRates(error_500=1.0)
                proxy.paths = frozenset({"getObject"})
                await client.put_objects(keys.kv_store_id, [KeyValue(key="k", version=-1, value=b"v")])
                with pytest.raises(InternalServerError):
                    await client.get_object(keys.kv_store_id, "k")
            assert proxy.counts["error_500"] == 1 and proxy.counts["delayed"] == 1


async def test_cli_injects_latency_and_reports_counts(vss_server, tmp_path):
    """`python -m tests.faults.proxy --listen 127.0.0.1:0 --upstream URL --latency-ms 30
    --seed 1` prints where it listens, forwards with the latency, and on SIGTERM prints
    its counts as JSON (and writes them with --counts-json)."""
    counts_path = tmp_path / "counts.json"
    command = [
        sys.executable, "-m", "tests.faults.proxy", "--listen", "127.0.0.1:0",
        "--upstream", vss_server.url.removesuffix("/vss"), "--latency-ms", "30", "--jitter-ms", "5",
        "--seed", "1", "--counts-json", str(counts_path),
    ]
    keys = derive_keys(generate_mnemonic())
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert process.stdout is not None
            output = b""
            for _ in range(1000):  # until the first line; bounded by the deadline above
                if b"\n" in output:
                    break
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"the proxy exited: {output!r}"
                output += chunk
            first = output.decode().splitlines()[0]
            assert first.startswith("fault-proxy: listening on http://127.0.0.1:"), first
            url = first.split()[3]
            async with _client(url + "/vss", keys) as client:
                started = trio.current_time()
                await client.put_objects(keys.kv_store_id, [KeyValue(key="k", version=-1, value=b"v")])
                assert trio.current_time() - started >= 0.03
            process.send_signal(signal.SIGTERM)
            for _ in range(1000):  # until EOF; bounded by the deadline above
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                output += chunk
            assert await process.wait() == 0, output
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    last = output.decode().splitlines()[-1]
    assert last.startswith("fault-proxy: counts "), output
    counts = json.loads(last.removeprefix("fault-proxy: counts "))
    assert counts["requests"] == 1 and counts["forwarded"] == 1 and counts["delayed"] == 1
    assert json.loads(counts_path.read_text()) == counts


async def test_retarget_hold_and_call_records(vss_server, spawn_vss_server, report):
    """`retarget` moves the proxy to another server while the client keeps its URL;
    `hold_bodies_over` holds large requests (counted in `held` and `in_flight`, not
    forwarded) while small ones pass, until `release_held`; `max_body_bytes` answers
    larger requests 413 without forwarding them; `record_calls` keeps each forwarded
    call with its status."""
    keys = derive_keys(generate_mnemonic())
    other = spawn_vss_server()
    with trio.fail_after(60):
        async with running_proxy(vss_server.url.removesuffix("/vss"), seed=report.seed) as proxy:
            proxy.record_calls = True
            async with _client(proxy.url + "/vss", keys) as client:
                await client.put_objects(keys.kv_store_id, [KeyValue(key="first", version=-1, value=b"v")])
                proxy.retarget(other.url.removesuffix("/vss"))
                await client.put_objects(keys.kv_store_id, [KeyValue(key="second", version=-1, value=b"v")])
                assert await _committed(vss_server.url, keys, "first") and not await _committed(vss_server.url, keys, "second")
                assert await _committed(other.url, keys, "second") and not await _committed(other.url, keys, "first")

                proxy.hold_bodies_over(10_000)
                big = KeyValue(key="big", version=-1, value=b"x" * 20_000)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: client.put_objects(keys.kv_store_id, [big]))
                    for _ in range(1000):  # until the proxy holds it; bounded by the deadline
                        if proxy.held == 1:
                            break
                        await trio.sleep(0.01)
                    assert proxy.held == 1 and proxy.in_flight == 1
                    await client.put_objects(keys.kv_store_id, [KeyValue(key="small", version=-1, value=b"v")])
                    assert await _committed(other.url, keys, "small") and not await _committed(other.url, keys, "big")
                    proxy.release_held()
                assert await _committed(other.url, keys, "big")
                assert proxy.held == 0 and proxy.in_flight == 0
                with pytest.raises(NoSuchKeyError):
                    await client.get_object(keys.kv_store_id, "absent")
                proxy.max_body_bytes = 10_000
                with pytest.raises(RequestTooLargeError):
                    await client.put_objects(keys.kv_store_id, [KeyValue(key="too-big", version=-1, value=b"x" * 20_000)])
                assert not await _committed(other.url, keys, "too-big")
    names = [(call.name, call.status) for call in proxy.calls]
    assert names[:3] == [("putObjects", 200)] * 3 and ("getObject", 404) in names, names
    assert [c.body_bytes > 10_000 for c in proxy.calls if c.name == "putObjects"] == [False, False, False, True], proxy.calls
    assert all(c.answered_at >= c.forwarded_at for c in proxy.calls)
    assert proxy.counts["retargeted"] == 1 and proxy.counts["held"] == 1 and proxy.counts["too_large"] == 1
