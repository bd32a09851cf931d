"""Node configuration: one dataclass, filled from CLI flags or from environment variables.

`OPTIONS` is the one table of the node's settings: each has a flag of `vssnode run`
and an environment twin (`VSSNODE_*`) for `hypercorn vssnode.asgi:app`, so the two
can never drift apart. Library users build `NodeConfig` directly.

`validate_vss_url` enforces HTTPS for any remote server, because the VSS traffic
carries the node's whole (encrypted) state and its authorization signatures, and
refuses a base URL that cannot be a VSS base (its path must end in `/vss`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vss.serve import is_loopback_host

NETWORKS = ("regtest", "testnet", "signet", "mainnet")
DEFAULT_LISTEN = "127.0.0.1:3001"
DEFAULT_MAX_VALUE_BYTES = 32 * 1024 * 1024
DEFAULT_RETRY_QUEUE_CAPACITY = 10_000
DEFAULT_VERIFY_INTERVAL_S = 21_600.0
DEFAULT_REMOTE_WRITE_TIMEOUT_S = 30.0


class ConfigError(ValueError):
    """A configuration value is unusable; the message is the one-line reason."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is started with; what `vssnode run`'s flags and `VSSNODE_*`
    variables fill in, and what `Node(config)` takes in a program. Each field is the
    flag of the same name (README, "Running"); `vss_url=None` runs without VSS. Raises
    ConfigError, with a one-line reason, for a value that cannot work."""

    data_dir: Path
    network: str = "regtest"
    vss_url: str | None = None
    vss_allow_http: bool = False
    vss_allow_empty_restore: bool = False
    vss_accept_divergence: bool = False
    vss_ca_file: Path | None = None
    vss_headers: tuple[tuple[str, str], ...] = ()
    vss_header_file: Path | None = None
    vss_verify_interval_s: float = DEFAULT_VERIFY_INTERVAL_S
    remote_write_timeout_s: float = DEFAULT_REMOTE_WRITE_TIMEOUT_S
    api_token: str | None = field(default=None, repr=False)
    listen: str = DEFAULT_LISTEN
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    retry_queue_capacity: int = DEFAULT_RETRY_QUEUE_CAPACITY
    # argon2id (opslimit, memlimit) for a new vault; None is PyNaCl's MODERATE. Test
    # suites choose cheaper limits here; the CLI offers no way to.
    vault_limits: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.retry_queue_capacity < 1:
            raise ConfigError("--retry-queue-capacity must be at least 1")
        known_network(self.network)
        if self.vss_url is not None:
            validate_vss_url(self.vss_url, allow_http=self.vss_allow_http)
        if self.vss_verify_interval_s < 0:
            raise ConfigError("--vss-verify-interval must be 0 (off) or a number of seconds")
        if self.remote_write_timeout_s <= 0:
            raise ConfigError("--remote-write-timeout must be a positive number of seconds")
        for flag, path in (("--vss-ca-file", self.vss_ca_file), ("--vss-header-file", self.vss_header_file)):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{flag} {path}: no such file")
        if self.api_token is not None and not self.api_token:
            raise ConfigError("the API token is empty")

    @property
    def vss_enabled(self) -> bool:
        return self.vss_url is not None

    def __repr__(self) -> str:  # the API token and header values are secrets
        return (
            f"NodeConfig(data_dir={str(self.data_dir)!r}, network={self.network!r}, "
            f"vss_url={self.vss_url!r}, api_token={'set' if self.api_token else None}, "
            f"vss_headers={[name for name, _ in self.vss_headers]!r})"
        )


def validate_vss_url(url: str, *, allow_http: bool) -> None:
    """Refuse URLs that would send the backup in clear text to another machine, or that
    cannot be a VSS base URL (whose four calls live under a path ending in `/vss`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--vss-url must be an http(s) URL with a host, got {url!r}")
    if parts.scheme == "http" and not allow_http and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"--vss-url {url!r} uses plain http to a non-loopback host; use https "
            "(or pass --vss-allow-http if you really mean it)"
        )
    if not parts.path.rstrip("/").endswith("/vss"):
        hint = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/vss", "", ""))
        raise ConfigError(f"--vss-url {url!r} is not a VSS base URL (its path must end in /vss); did you mean {hint}?")


def split_header(text: str) -> tuple[str, str]:
    """`NAME: VALUE` as (name, value); ConfigError (never echoing the value) otherwise."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name) or not value.strip():
        raise ConfigError(f"a VSS header must look like 'NAME: VALUE' (header {name or '?'!r})")
    return name, value.strip()


# -- the table of options ------------------------------------------------------------------------


def known_network(name: str) -> str:
    """`name` if the node knows that network; ConfigError otherwise. Parsing the flag or
    its variable with it lets the message name which one was wrong."""
    if name not in NETWORKS:
        raise ConfigError(f"unknown network {name!r}; use one of {', '.join(NETWORKS)}")
    return name


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a whole number") from None


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(split_header(line) for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class Option:
    """One setting: its NodeConfig field, its flag, its environment twin, its parser."""

    field: str
    flag: str
    help: str
    parse: Callable[[str], Any] = str
    metavar: str | None = None
    is_switch: bool = False
    repeatable: bool = False

    @property
    def env(self) -> str:
        return "VSSNODE_" + self.flag.lstrip("-").replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("listen", "--listen", f"HOST:PORT of the node API (default {DEFAULT_LISTEN}); loopback unless an API token is set",
           metavar="HOST:PORT"),
    Option("network", "--network", "regtest, testnet, signet or mainnet (default regtest); recorded at init, "
           "the data dir refuses any other", known_network, metavar="NAME"),
    Option("vss_url", "--vss-url", "base URL of the VSS server, ending in /vss; enables backup and restore", metavar="URL"),
    Option("vss_allow_http", "--vss-allow-http", "allow plain http to a non-loopback VSS server", _bool, is_switch=True),
    Option("vss_allow_empty_restore", "--vss-allow-empty-restore",
           "if the restore at unlock fails, start empty (loudly) instead of failing the unlock", _bool, is_switch=True),
    Option("vss_accept_divergence", "--vss-accept-divergence",
           "unlock although another node wrote the VSS store meanwhile: the local state wins and is re-sent",
           _bool, is_switch=True),
    Option("vss_ca_file", "--vss-ca-file", "PEM file of CA certificates to trust for https to the VSS server", Path,
           metavar="PEM"),
    Option("vss_headers", "--vss-header", "send this header with every VSS request (repeatable); a fixed Authorization "
           "header replaces the signature scheme", split_header, metavar="'NAME: VALUE'", repeatable=True),
    Option("vss_header_file", "--vss-header-file", "file of 'NAME: VALUE' lines sent with every VSS request, re-read when "
           "it changes and after a 401 (keeps tokens off the command line)", Path, metavar="FILE"),
    Option("vss_verify_interval_s", "--vss-verify-interval", "seconds between comparisons of the remote key set with the "
           f"local one (default {DEFAULT_VERIFY_INTERVAL_S:.0f}; 0 turns them off)", _seconds, metavar="SECONDS"),
    Option("remote_write_timeout_s", "--remote-write-timeout", "how long a durability=remote write waits for VSS "
           f"before 504 (default {DEFAULT_REMOTE_WRITE_TIMEOUT_S:.0f})", _seconds, metavar="SECONDS"),
    Option("retry_queue_capacity", "--retry-queue-capacity", "keys held in memory for resending while VSS fails; "
           f"beyond that they are re-read from disk (default {DEFAULT_RETRY_QUEUE_CAPACITY})", _whole, metavar="N"),
    Option("api_token", "--api-token", "require 'Authorization: Bearer TOKEN' on every API call (visible to other "
           "local users in the process list: prefer --api-token-file or VSSNODE_API_TOKEN)", metavar="TOKEN"),
    Option("api_token_file", "--api-token-file", "read the API token from this file (its first line)", Path,
           metavar="FILE"),
)


def read_token_file(path: Path) -> str:
    """The first line of a token file, stripped; ConfigError if unreadable or empty."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ConfigError(f"the API token file {path} is empty")
    return token


def build(values: Mapping[str, Any]) -> NodeConfig:
    """A NodeConfig from option values by field name (None: not given). The token file,
    when given, supplies the token; giving both a token and a token file is an error."""
    given = {name: value for name, value in values.items() if value is not None}
    token_file = given.pop("api_token_file", None)
    if token_file is not None:
        if "api_token" in given:
            raise ConfigError("give the API token once: --api-token or --api-token-file, not both")
        given["api_token"] = read_token_file(token_file)
    known = {f.name for f in fields(NodeConfig)}
    unknown = set(given) - known
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    if "data_dir" in given:
        given["data_dir"] = Path(given["data_dir"])
    return NodeConfig(**given)


def from_env(environ: Mapping[str, str] | None = None) -> NodeConfig:
    """The configuration from VSSNODE_DATA_DIR and the VSSNODE_* twin of every flag."""
    env = os.environ if environ is None else environ
    if not env.get("VSSNODE_DATA_DIR"):
        raise ConfigError("VSSNODE_DATA_DIR is not set")
    values: dict[str, Any] = {"data_dir": env["VSSNODE_DATA_DIR"]}
    for option in OPTIONS:
        text = env.get(option.env, "")
        if not text.strip():
            continue
        try:
            values[option.field] = _headers(text) if option.repeatable else option.parse(text)
        except ConfigError as exc:
            raise ConfigError(f"{option.env}: {exc}") from None
    return build(values)
