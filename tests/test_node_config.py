"""Configuration: --vss-url validation, environment twins of the flags, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, NodeConfig, from_env, validate_vss_url


@pytest.mark.parametrize(
    "url, allow_http",
    [
        ("https://vss.example.com/vss", False),
        ("http://127.0.0.1:8081/vss", False),
        ("http://127.5.6.7/vss", False),
        ("http://localhost:8081/vss", False),
        ("http://[::1]:8081/vss", False),
        ("http://vss.example.com/vss", True),
    ],
)
def test_accepted_vss_urls(url, allow_http):
    validate_vss_url(url, allow_http=allow_http)


@pytest.mark.parametrize(
    "url",
    ["http://vss.example.com/vss", "http://10.0.0.5/vss", "ftp://vss.example.com/vss", "vss.example.com", "https:///vss"],
)
def test_refused_vss_urls(url):
    with pytest.raises(ConfigError):
        validate_vss_url(url, allow_http=False)


def test_environment_twins_of_the_flags(tmp_path):
    config = from_env(
        {
            "VSSNODE_DATA_DIR": str(tmp_path),
            "VSSNODE_NETWORK": "signet",
            "VSSNODE_VSS_URL": "http://vss.internal/vss",
            "VSSNODE_VSS_ALLOW_HTTP": "1",
            "VSSNODE_VSS_ALLOW_EMPTY_RESTORE": "true",
            "VSSNODE_API_TOKEN": "s3cr3t-value",
            "VSSNODE_RETRY_QUEUE_CAPACITY": "200",
            "VSSNODE_VSS_VERIFY_INTERVAL": "90",
            "VSSNODE_VSS_ACCEPT_DIVERGENCE": "yes",
        }
    )
    assert config == NodeConfig(
        data_dir=tmp_path, network="signet", vss_url="http://vss.internal/vss", vss_allow_http=True,
        vss_allow_empty_restore=True, api_token="s3cr3t-value",
        retry_queue_capacity=200, vss_verify_interval_s=90.0, vss_accept_divergence=True,
    )
    assert "s3cr3t-value" not in repr(config)
    with pytest.raises(ConfigError):
        from_env({})


@pytest.mark.parametrize(
    "args",
    [
        ["--vss-url", "http://vss.example.com/vss"],
        ["--vss-url", "not a url"],
        ["--listen", "nohostport"],
        ["--retry-queue-capacity", "0"],
    ],
)
def test_cli_exits_2_with_a_one_line_reason(tmp_path, args):
    result = subprocess.run(
        [sys.executable, "-m", "vssnode", "run", str(tmp_path / "d"), *args],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("vssnode: ")
    assert not (tmp_path / "d").exists()  # nothing created


def test_a_bad_variable_under_hypercorn_is_one_line_and_exit_2(tmp_path):
    """`hypercorn 'vssnode.asgi:app'` with a VSSNODE_* value that cannot work: one line
    naming the variable, no traceback, nothing created, status 2 (in hypercorn's own
    process, `--workers 0`: its worker processes' status is lost by hypercorn 0.18)."""
    import os

    env = {**os.environ, "VSSNODE_DATA_DIR": str(tmp_path / "n"), "VSSNODE_NETWORK": "moonnet"}
    hypercorn = Path(sys.executable).with_name("hypercorn")
    result = subprocess.run([str(hypercorn), "vssnode.asgi:app", "--bind", "127.0.0.1:0", "--workers", "0"],
                            env=env, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("vssnode: VSSNODE_NETWORK: unknown network 'moonnet'") and "Traceback" not in result.stderr
    assert not (tmp_path / "n").exists()


def test_node_runs_as_a_plain_asgi_app_under_hypercorn(tmp_path):
    """`hypercorn 'vssnode.asgi:app'` configured by VSSNODE_* (a documented entry point)."""
    import os
    import time

    import httpx

    from conftest import free_loopback_port

    port = free_loopback_port()
    env = {**os.environ, "VSSNODE_DATA_DIR": str(tmp_path / "n"), "VSSNODE_NETWORK": "signet"}
    hypercorn = Path(sys.executable).with_name("hypercorn")
    process = subprocess.Popen(
        [str(hypercorn), "vssnode.asgi:app", "--bind", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/nodeinfo", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "hypercorn did not serve the node"
                time.sleep(0.05)  # poll interval, bounded by the deadline
        assert info["state"] == "uninitialized" and info["network"] == "signet" and info["vss_enabled"] is False
    finally:
        process.terminate()
        process.wait(timeout=30)
