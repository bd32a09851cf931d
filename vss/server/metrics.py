"""The server's Prometheus metrics, served unauthenticated at `GET /metrics`.

Each app has its own registry, so several apps in one process (the tests) do not
collide. When PROMETHEUS_MULTIPROC_DIR is set (the command line sets it for
`--workers N`), prometheus_client keeps every worker's values in files there and a
scrape of any worker returns the sum over all of them.

    vss_requests_total{route, status}        requests answered, by call and HTTP status
    vss_request_duration_seconds{route}      time from request to response (histogram)
    vss_items_written_total                   items written or deleted by successful calls
    vss_items_read_total                      objects returned by getObject, keys by listKeyVersions
    vss_auth_failures_total                   requests refused with 401
    vss_database_errors_total                 calls that failed inside the server (500)
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerMetrics:
    """Counters the app updates per request; `render()` is the Prometheus text."""

    def __init__(self) -> None:
        self._multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._registry = CollectorRegistry()
        registry = self._registry
        self._requests = Counter(
            "vss_requests", "Requests answered, by route and HTTP status", ["route", "status"], registry=registry
        )
        self._latency = Histogram(
            "vss_request_duration_seconds", "Time from request to response", ["route"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self._written = Counter("vss_items_written", "Items written or deleted by successful calls", registry=registry)
        self._read = Counter("vss_items_read", "Objects and key versions returned", registry=registry)
        self._auth_failures = Counter("vss_auth_failures", "Requests refused with 401", registry=registry)
        self._database_errors = Counter(
            "vss_database_errors", "Calls that failed inside the server (500)", registry=registry
        )
        # labels() costs a lock and a dict lookup per call: keep the children at hand.
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        """One answered request."""
        counter = self._request_children.get((route, status))
        if counter is None:
            counter = self._request_children[(route, status)] = self._requests.labels(route, str(status))
        counter.inc()
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self._latency.labels(route)
        histogram.observe(seconds)
        if status == 401:
            self._auth_failures.inc()
        elif status >= 500:
            self._database_errors.inc()

    def items(self, *, written: int = 0, read: int = 0) -> None:
        if written:
            self._written.inc(written)
        if read:
            self._read.inc(read)

    def render(self) -> bytes:
        """The Prometheus text exposition: this app's values, or every worker's summed."""
        if self._multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self._registry)
