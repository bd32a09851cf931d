"""The node's figures for `/metrics`: one prometheus_client registry per node.

Counters are created once per node (a registry refuses a name twice) and each actor
counts only its own: the local-writer its commits, the replicator its keys, batches,
failures and refusals, the retry-queue its drops, the ownership-guard the emptied
stores it refilled, the wallet keeper its uploads. Gauges that describe the node as a
whole (state, pending writes and their age, restore progress, the last verification)
are read when scraped, from the node's frozen status snapshots and the local store,
through `NodeGauges`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "vssnode"

GAUGE_HELP: dict[str, str] = {
    "running": "1 while the node is unlocked and running",
    "fenced": "1 once another node took the VSS store over",
    "diverged": "1 while replication is stopped because another node wrote the VSS store",
    "pending_kv_writes": "KV keys whose latest change the VSS server may not have yet",
    "replication_lag_seconds": "age of the oldest change not yet on the VSS server",
    "last_sync_timestamp_seconds": "unix time of the last batch that landed",
    "rejected_kv_writes": "KV keys whose value the VSS server refuses (still owed)",
    "restore_keys_listed": "keys the last restore found on the server so far",
    "restore_keys_done": "keys restored by the last restore",
    "restore_bytes_done": "bytes restored by the last restore",
    "restore_finished": "1 once the last restore made its data live",
    "last_verified_timestamp_seconds": "unix time of the last comparison of the remote key set with the local one",
    "verify_missing": "local keys the server lacked at the last comparison (re-sent since)",
    "verify_extra": "keys only the server had at the last comparison (reported, never deleted)",
    "wallet_backup_restorable": "1 while the server holds a whole wallet backup",
    "wallet_backup_required": "1 while the wallet has changes the server does not have",
}


class NodeGauges(Collector):
    """Reads the node-wide gauges at scrape time; `read()` gives them by name (absent: unknown)."""

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in sorted(self._read().items()):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", GAUGE_HELP.get(name, name.replace("_", " ")), value=float(value))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())  # the set of gauges depends on the node's state: describe nothing up front


class NodeMetrics:
    """The registry of one node and the counters its actors own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.local_commits = Counter(f"{PREFIX}_local_commits", "local SQLite transactions (group commits)", registry=r)
        self.replicated_keys = Counter(f"{PREFIX}_replicated_keys", "KV keys written to the VSS server", registry=r)
        self.replication_batches = Counter(f"{PREFIX}_replication_batches", "putObjects batches that landed", registry=r)
        self.replication_failures = Counter(f"{PREFIX}_replication_failures", "putObjects batches that failed", registry=r)
        self.rejected_kv_writes = Counter(
            f"{PREFIX}_kv_value_refusals", "KV values the VSS server refused (first refusal of each)", registry=r
        )
        self.retry_queue_keys = Gauge(f"{PREFIX}_retry_queue_keys", "keys waiting in the retry queue", registry=r)
        self.retry_queue_dropped = Counter(
            f"{PREFIX}_retry_queue_dropped", "keys dropped from the full retry queue (still owed via markers)", registry=r
        )
        self.store_resets = Counter(
            f"{PREFIX}_store_resets", "VSS stores found empty (server lost its data) and refilled", registry=r
        )
        self.wallet_backups = Counter(f"{PREFIX}_wallet_backups", "wallet uploads that completed", registry=r)
        self.wallet_backup_failures = Counter(f"{PREFIX}_wallet_backup_failures", "wallet uploads that failed", registry=r)

    def watch(self, read: Callable[[], Mapping[str, float]]) -> None:
        """Register the node-wide gauges (once per node)."""
        self.registry.register(NodeGauges(read))

    def value(self, name: str) -> float | None:
        """A figure as exported, without the prefix: `value("replicated_keys_total")`."""
        return self.registry.get_sample_value(f"{PREFIX}_{name}")
