"""Prometheus text exposition of the node's figures (format version 0.0.4).

Node.metrics() gives the figures by name; this module adds the `vssnode_` prefix, the
HELP and TYPE lines, and the formatting. Figures the node does not have right now (no
session, VSS off) are simply absent.
"""

from __future__ import annotations

# name -> (type, help)
_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "running": ("gauge", "1 while the node is unlocked and running"),
    "fenced": ("gauge", "1 once another node took the VSS store over"),
    "pending_kv_writes": ("gauge", "KV keys whose latest change the VSS server may not have yet"),
    "replication_lag_seconds": ("gauge", "age of the oldest change not yet on the VSS server"),
    "replicated_keys_total": ("counter", "KV keys written to the VSS server this session"),
    "replication_batches_total": ("counter", "putObjects batches that landed this session"),
    "replication_failures_total": ("counter", "putObjects batches that failed this session"),
    "last_sync_timestamp_seconds": ("gauge", "unix time of the last batch that landed"),
    "retry_queue_keys": ("gauge", "keys waiting in the retry queue"),
    "retry_queue_dropped_total": ("counter", "keys dropped from the full retry queue (still owed via markers)"),
    "local_commits_total": ("counter", "local SQLite transactions (group commits) this session"),
    "restore_keys_done": ("gauge", "keys restored by the last restore"),
    "restore_bytes_done": ("gauge", "bytes restored by the last restore"),
    "restore_finished": ("gauge", "1 once the last restore made its data live"),
    "wallet_backups_total": ("counter", "wallet uploads that completed this session"),
    "wallet_backup_failures_total": ("counter", "wallet uploads that failed this session"),
}


def render(figures: dict[str, float]) -> str:
    lines: list[str] = []
    for name in sorted(figures):
        kind, help_text = _DESCRIPTIONS.get(name, ("gauge", name.replace("_", " ")))
        full = f"vssnode_{name}"
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        lines.append(f"{full} {float(figures[name]):.17g}")
    return "\n".join(lines) + "\n"
