"""Node configuration: one dataclass, filled from CLI flags or from environment variables.

The CLI (`vssnode run`) and the ASGI entry (`vssnode.asgi:app`) build the same
`NodeConfig`; library users build it directly. `validate_vss_url` enforces HTTPS for
any remote server, because the VSS traffic carries the node's whole (encrypted) state
and its authorization signatures.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

NETWORKS = ("regtest", "testnet", "signet", "mainnet")
DEFAULT_LISTEN = "127.0.0.1:3001"
DEFAULT_MAX_VALUE_BYTES = 32 * 1024 * 1024
DEFAULT_RETRY_QUEUE_CAPACITY = 10_000


class ConfigError(ValueError):
    """A configuration value is unusable; the message is the one-line reason."""


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    network: str = "regtest"
    vss_url: str | None = None
    vss_allow_http: bool = False
    vss_allow_empty_restore: bool = False
    api_token: str | None = None
    listen: str = DEFAULT_LISTEN
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    retry_queue_capacity: int = DEFAULT_RETRY_QUEUE_CAPACITY

    def __post_init__(self) -> None:
        if self.retry_queue_capacity < 1:
            raise ConfigError("--retry-queue-capacity must be at least 1")
        if self.network not in NETWORKS:
            raise ConfigError(f"unknown network {self.network!r}; use one of {', '.join(NETWORKS)}")
        if self.vss_url is not None:
            validate_vss_url(self.vss_url, allow_http=self.vss_allow_http)

    @property
    def vss_enabled(self) -> bool:
        return self.vss_url is not None

    def __repr__(self) -> str:  # the API token is a secret
        token = "set" if self.api_token else None
        return (
            f"NodeConfig(data_dir={str(self.data_dir)!r}, network={self.network!r}, "
            f"vss_url={self.vss_url!r}, api_token={token})"
        )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_vss_url(url: str, *, allow_http: bool) -> None:
    """Refuse URLs that would send the backup in clear text to another machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--vss-url must be an http(s) URL with a host, got {url!r}")
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"--vss-url {url!r} uses plain http to a non-loopback host; use https "
            "(or pass --vss-allow-http if you really mean it)"
        )


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vssnode run`; each has an environment twin for `vssnode.asgi:app`."""
    parser.add_argument("data_dir", type=Path, help="directory holding the node's database and wallet")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT of the node API (default %(default)s)")
    parser.add_argument("--network", default="regtest", choices=NETWORKS, help="recorded at init; the data dir refuses any other")
    parser.add_argument("--vss-url", help="base URL of the VSS server (ends in /vss); enables backup and restore")
    parser.add_argument("--vss-allow-http", action="store_true", help="allow plain http to a non-loopback VSS server")
    parser.add_argument(
        "--vss-allow-empty-restore",
        action="store_true",
        help="if the restore at unlock fails, start with empty state instead of failing the unlock",
    )
    parser.add_argument("--api-token", help="require 'Authorization: Bearer TOKEN' on every API call")
    parser.add_argument(
        "--retry-queue-capacity",
        type=int,
        default=DEFAULT_RETRY_QUEUE_CAPACITY,
        help="keys held in memory for resending while VSS fails (beyond: re-read from disk); default %(default)s",
    )


def from_args(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(
        data_dir=args.data_dir,
        network=args.network,
        vss_url=args.vss_url,
        vss_allow_http=args.vss_allow_http,
        vss_allow_empty_restore=args.vss_allow_empty_restore,
        api_token=args.api_token,
        listen=args.listen,
        retry_queue_capacity=args.retry_queue_capacity,
    )


def _env_flag(environ: dict[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def from_env(environ: dict[str, str] | None = None) -> NodeConfig:
    """Read VSSNODE_DATA_DIR, VSSNODE_NETWORK, VSSNODE_VSS_URL, VSSNODE_VSS_ALLOW_HTTP,
    VSSNODE_VSS_ALLOW_EMPTY_RESTORE, VSSNODE_API_TOKEN and VSSNODE_RETRY_QUEUE_CAPACITY
    (names follow the flags)."""
    env = dict(os.environ if environ is None else environ)
    if not env.get("VSSNODE_DATA_DIR"):
        raise ConfigError("VSSNODE_DATA_DIR is not set")
    return NodeConfig(
        data_dir=Path(env["VSSNODE_DATA_DIR"]),
        network=env.get("VSSNODE_NETWORK", "regtest"),
        vss_url=env.get("VSSNODE_VSS_URL") or None,
        vss_allow_http=_env_flag(env, "VSSNODE_VSS_ALLOW_HTTP"),
        vss_allow_empty_restore=_env_flag(env, "VSSNODE_VSS_ALLOW_EMPTY_RESTORE"),
        api_token=env.get("VSSNODE_API_TOKEN") or None,
        retry_queue_capacity=_env_int(env, "VSSNODE_RETRY_QUEUE_CAPACITY", DEFAULT_RETRY_QUEUE_CAPACITY),
    )


def _env_int(environ: dict[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text!r}") from None
