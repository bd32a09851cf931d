"""A fault-injecting HTTP/1.1 proxy on loopback, written on trio.

It sits between a node's VSS client and a VSS server and does, on command, what a bad
network or a bad server does: adds latency and jitter, refuses connections, resets or
stalls them in the middle of a request or of a response, answers 500 or garbage, drops
an answer after the server has committed the call, blackholes every request, or goes
down altogether (nothing listens on its port) and comes back on the same port.

From a test, inside a trio task group:

    async with running_proxy(upstream="http://127.0.0.1:8081", seed=7) as proxy:
        node_url = proxy.url + "/vss"
        proxy.rates = FaultRates(error_500=0.05, drop_after_commit=0.05)
        proxy.latency_ms, proxy.jitter_ms = 20, 10
        await proxy.go_down()          # connection refused from now on
        await proxy.go_up()            # same port again
        proxy.heal()                   # no faults, no latency
        print(proxy.figures())         # what it injected, by kind
        proxy.retarget("http://127.0.0.1:8082")  # forward to another server from now on
        proxy.hold_bodies_over(64 * 1024)        # hold large requests (wallet pieces) ...
        proxy.release_held()                     # ... until released
        proxy.record_calls = True      # then proxy.calls: each forwarded call, timed, with its status

From a shell (benchmarks start it as a subprocess for injected latency):

    python -m tests.faults.proxy --listen 127.0.0.1:0 --upstream http://127.0.0.1:8081 \\
        --latency-ms 50 --jitter-ms 10 --seed 1

It prints `fault-proxy: listening on http://127.0.0.1:PORT ...` once it accepts
connections, and its counts as one JSON line when SIGINT or SIGTERM stops it.

`in_flight` counts the requests it is handling (head read, answer not yet sent), those
of clients that died meanwhile included: a test that kills a node waits for it to
reach 0 before it reads the server, so no request of the dead node lands afterwards.

What it guarantees: at most one fault per request, chosen with a seeded random
generator (`random.Random(seed)`), so a run's sequence of choices is reproducible for
a given arrival order; every injected fault is counted by kind (`counts`). A garbage
answer only ever replaces a 200 of the upstream (the call did succeed), never an
error, so a client that mistook garbage for success would still be right. Only
loopback addresses are accepted, on both sides.
"""

from __future__ import annotations

import argparse
import collections
import enum
import json
import logging
import random
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields

import h11
import httpx
import trio

from .wire import (
    RECEIVE_BYTES,
    AbortConnection,
    close_now,
    head_bytes,
    next_event,
    read_body,
    require_loopback_host,
    require_loopback_url,
    reset_now,
    respond,
    send_head,
)

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_CONNECTION = 100_000  # then the answer says `connection: close`
MAX_ACCEPTS = 100_000_000  # per listener; then it stops accepting (a benchmark never gets near)
IDLE_TIMEOUT_S = 120.0  # a keep-alive connection with no new request is closed
UPSTREAM_TIMEOUT_S = 60.0
BLACKHOLE_MAX_S = 60.0  # a blackholed request is reset at the latest after this
_POLL_S = 0.05

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"content-encoding",
        b"accept-encoding",
    }
)
# Not protobuf (0x3c is an end-group tag with no group open), not JSON: never parses.
_GARBAGE_PREFIX = b"<html>fault-proxy garbage</html>"


class Fault(enum.StrEnum):
    """The kinds of fault, as named in `counts`."""

    REFUSE = "refuse"  # connection closed (reset) right after accept
    RESET_REQUEST = "reset_request"  # reset after the request head; never forwarded
    STALL_REQUEST = "stall_request"  # request held `stall_ms`, never forwarded, then reset
    ERROR_500 = "error_500"  # 500 with a text body; never forwarded
    GARBAGE = "garbage"  # forwarded; the upstream's 200 replaced by 200 + garbage
    RESET_RESPONSE = "reset_response"  # forwarded; reset halfway through the answer
    STALL_RESPONSE = "stall_response"  # forwarded; half the answer, `stall_ms`, reset
    DROP_AFTER_COMMIT = "drop_after_commit"  # forwarded; reset without answering
    BLACKHOLE = "blackhole"  # request read, never answered (until the client gives up)
    LATENCY_SPIKE = "latency_spike"  # `spike_ms` added on top of the latency


@dataclass(frozen=True)
class FaultRates:
    """Fractions of requests (of connections, for `refuse`) that get each fault.

    The request-level fractions are slices of one draw per request, so they must add
    up to at most 1; a request gets at most one of them.
    """

    refuse: float = 0.0
    reset_request: float = 0.0
    stall_request: float = 0.0
    error_500: float = 0.0
    garbage: float = 0.0
    reset_response: float = 0.0
    stall_response: float = 0.0
    drop_after_commit: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault rate {f.name} must be within [0, 1], got {value}")
        if sum(rate for _, rate in self.request_slices()) > 1.0 + 1e-9:
            raise ValueError("the request fault rates add up to more than 1")

    def request_slices(self) -> list[tuple[Fault, float]]:
        return [
            (Fault.RESET_REQUEST, self.reset_request),
            (Fault.STALL_REQUEST, self.stall_request),
            (Fault.ERROR_500, self.error_500),
            (Fault.GARBAGE, self.garbage),
            (Fault.RESET_RESPONSE, self.reset_response),
            (Fault.STALL_RESPONSE, self.stall_response),
            (Fault.DROP_AFTER_COMMIT, self.drop_after_commit),
        ]


NO_FAULTS = FaultRates()


@dataclass(frozen=True)
class CallRecord:
    """One call the proxy forwarded (with `record_calls` on), on trio's clock."""

    name: str  # the call, the last path segment: "putObjects", "getObject", ...
    body_bytes: int
    forwarded_at: float  # when the proxy sent it to the upstream
    answered_at: float  # when the upstream's answer (or failure) came back
    status: int  # the upstream's status; 502 when the upstream failed


def call_name(target: str) -> str:
    """The VSS call a request target names: `/vss/putObjects?x` -> `putObjects`."""
    return target.rsplit("?", 1)[0].rsplit("/", 1)[-1]


class FaultProxy:
    """One listening proxy. Set its fields from the test; they apply to the next request.

    Fields: `rates` (FaultRates), `latency_ms`, `jitter_ms` (uniform extra, seeded),
    `spike_rate` and `spike_ms` (occasional extra latency), `stall_ms` (how long a
    stall holds before the reset), `refuse_all` (reset every new connection; pair it
    with `reset_open_connections()` so kept-alive ones do not carry on),
    `blackhole` (read requests, never answer), `paths` (None, or the set of call
    names, the last path segment such as "putObjects", that faults apply to; latency
    applies to all), `record_calls` (keep a `CallRecord` of every forwarded call in
    `calls`), `max_body_bytes` (None, or answer a larger request 413 with a plain-text
    body, as a reverse proxy with a body limit does, without forwarding it).
    Read `counts` for what it did, `in_flight` for the requests it is handling, `held`
    for the requests `hold_bodies_over` holds back.
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        rates: FaultRates = NO_FAULTS,
    ) -> None:
        require_loopback_url(upstream, "upstream")
        require_loopback_host(host, "listen host")
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        self.seed = seed
        self.rates = rates
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.spike_rate = 0.0
        self.spike_ms = 0.0
        self.stall_ms = 500.0
        self.refuse_all = False
        self.blackhole = False
        self.paths: frozenset[str] | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.record_calls = False
        self.max_body_bytes: int | None = None
        self.calls: list[CallRecord] = []
        self.in_flight = 0
        self.held = 0
        self._hold_over: int | None = None
        self._released = trio.Event()
        self._rng = random.Random(seed)
        self._nursery: trio.Nursery | None = None
        self._http: httpx.AsyncClient | None = None
        self._listeners: list[trio.SocketListener] = []
        self._connections: dict[int, tuple[trio.CancelScope, trio.SocketStream]] = {}
        self._next_connection = 0
        self.is_up = False

    @property
    def url(self) -> str:
        """Base URL of the proxy (append the upstream's path, e.g. "/vss")."""
        return f"http://{self.host}:{self.port}"

    # -- commands ------------------------------------------------------------------------

    def heal(self) -> None:
        """No more faults and no latency, nothing held (a down proxy stays down: use go_up)."""
        self.rates = NO_FAULTS
        self.latency_ms = self.jitter_ms = self.spike_rate = self.spike_ms = 0.0
        self.refuse_all = self.blackhole = False
        self.paths = None
        self.max_body_bytes = None
        self.release_held()

    async def go_down(self) -> None:
        """Stop listening (new connections are refused by the kernel) and reset every
        open connection, requests in flight included."""
        if not self.is_up:
            return
        self.is_up = False
        self.counts["down"] += 1
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.aclose()
        self.reset_open_connections()
        await trio.lowlevel.checkpoint()

    def reset_open_connections(self) -> None:
        """Reset every open client connection now (requests in flight included), so
        that the clients' next calls need new connections — which `refuse_all` then
        refuses."""
        for scope, stream in list(self._connections.values()):
            reset_now(stream)
            scope.cancel()

    async def go_up(self) -> None:
        """Listen again, on the same port."""
        if self.is_up:
            return
        await self._listen()

    def retarget(self, upstream: str) -> None:
        """Forward every request from now on to `upstream` (loopback): the clients keep
        their URL while the server behind it changes (a new server, an emptied one)."""
        require_loopback_url(upstream, "upstream")
        self.upstream = upstream.rstrip("/")
        self.counts["retargeted"] += 1

    def hold_bodies_over(self, size: int) -> None:
        """From now on, hold every request whose body is over `size` bytes (read, not
        forwarded) until `release_held()`; smaller requests pass as usual."""
        self._hold_over = size
        if self._released.is_set():
            self._released = trio.Event()

    def release_held(self) -> None:
        """Forward the held requests, and hold no more."""
        self._hold_over = None
        self._released.set()

    def figures(self) -> dict[str, int]:
        """What the proxy did so far: requests, forwarded, connections, and each fault."""
        return dict(sorted(self.counts.items()))

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[FaultProxy] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `task_status.started` once it accepts connections."""
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT_S, limits=limits) as http:
            self._http = http
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    await self._listen()
                    task_status.started(self)
                    await trio.sleep_forever()
            finally:
                self.is_up = False
                self._listeners = []

    async def _listen(self) -> None:
        assert self._nursery is not None, "run() the proxy first"
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        self._listeners = listeners
        self.is_up = True
        for listener in listeners:
            self._nursery.start_soon(self._accept_loop, listener)

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        # Runs until go_down closes the listener or the proxy is cancelled (tests run it
        # under a deadline); the count bound is only there so that no loop is endless.
        for _ in range(MAX_ACCEPTS):
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:  # out of file descriptors and the like: back off
                log.warning("fault-proxy: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            self.counts["connections"] += 1
            if self.refuse_all or self._draw() < self.rates.refuse:
                self.counts[Fault.REFUSE.value] += 1
                reset_now(stream)
                continue
            assert self._nursery is not None
            self._nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        ident = self._next_connection
        self._next_connection += 1
        with trio.CancelScope() as scope:
            self._connections[ident] = (scope, stream)
            try:
                await self._serve(stream)
            except (AbortConnection, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                reset_now(stream)
            finally:
                del self._connections[ident]
                close_now(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        for served in range(MAX_REQUESTS_PER_CONNECTION):
            with trio.move_on_after(IDLE_TIMEOUT_S):
                head = await next_event(conn, stream)
            if not isinstance(head, h11.Request):
                return  # the client closed, or went idle too long
            self.counts["requests"] += 1
            last = served == MAX_REQUESTS_PER_CONNECTION - 1
            await self._exchange(conn, stream, head, last)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    # -- one request ---------------------------------------------------------------------

    async def _exchange(self, conn: h11.Connection, stream: trio.SocketStream, head: h11.Request, last: bool) -> None:
        self.in_flight += 1
        try:
            await self._exchange_counted(conn, stream, head, last)
        finally:
            self.in_flight -= 1

    async def _exchange_counted(self, conn: h11.Connection, stream: trio.SocketStream, head: h11.Request, last: bool) -> None:
        target = head.target.decode("ascii", errors="replace")
        fault = self._choose(target)
        delay_ms = self.latency_ms + (self._rng.uniform(0.0, self.jitter_ms) if self.jitter_ms > 0 else 0.0)
        if self.spike_rate > 0 and self._draw() < self.spike_rate:
            self.counts[Fault.LATENCY_SPIKE.value] += 1
            delay_ms += self.spike_ms
        if fault is Fault.RESET_REQUEST:
            self.counts[fault.value] += 1
            raise AbortConnection()
        if fault is Fault.STALL_REQUEST:
            self.counts[fault.value] += 1
            await trio.sleep(self.stall_ms / 1000)
            raise AbortConnection()
        body = await read_body(conn, stream)
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            self.counts["too_large"] += 1
            text = f"fault-proxy: request body of {len(body)} bytes is over {self.max_body_bytes}".encode()
            await respond(conn, stream, 413, text, b"text/plain", last)
            return
        if self._hold_over is not None and len(body) > self._hold_over:
            self.counts["held"] += 1
            self.held += 1
            try:
                await self._released.wait()
            finally:
                self.held -= 1
        if self.blackhole:
            self.counts[Fault.BLACKHOLE.value] += 1
            await self._hold(stream)
            raise AbortConnection()
        if delay_ms > 0:
            self.counts["delayed"] += 1
            self.counts["latency_ms_total"] += round(delay_ms)
            await trio.sleep(delay_ms / 1000)
        if fault is Fault.ERROR_500:
            self.counts[fault.value] += 1
            await respond(conn, stream, 500, b"fault-proxy: injected 500", b"text/plain", last)
            return
        status, headers, content = await self._forward(head, body)
        if fault is Fault.DROP_AFTER_COMMIT:
            self.counts[fault.value] += 1
            raise AbortConnection()
        if fault is Fault.GARBAGE and status == 200:
            self.counts[fault.value] += 1
            junk = _GARBAGE_PREFIX + self._rng.randbytes(self._rng.randrange(0, 64))
            await respond(conn, stream, 200, junk, b"application/octet-stream", last)
            return
        if fault in (Fault.RESET_RESPONSE, Fault.STALL_RESPONSE):
            # Cut the answer's bytes (head and body) in half: mid-response even when
            # the body is empty, as a putObjects answer is.
            self.counts[fault.value] += 1
            whole = head_bytes(conn, status, headers, len(content), last) + conn.send(h11.Data(data=content))
            await stream.send_all(whole[: len(whole) // 2])
            if fault is Fault.STALL_RESPONSE:
                await trio.sleep(self.stall_ms / 1000)
            raise AbortConnection()
        await send_head(conn, stream, status, headers, len(content), last)
        await stream.send_all(conn.send(h11.Data(data=content)))
        await stream.send_all(conn.send(h11.EndOfMessage()))

    def _draw(self) -> float:
        return self._rng.random()

    def _choose(self, target: str) -> Fault | None:
        draw = self._draw()  # drawn for every request, so the sequence does not depend on `paths`
        if self.paths is not None and call_name(target) not in self.paths:
            return None
        edge = 0.0
        for fault, rate in self.rates.request_slices():
            edge += rate
            if draw < edge:
                return fault
        return None

    async def _hold(self, stream: trio.SocketStream) -> None:
        """Blackhole: answer nothing until the client gives up, the blackhole is
        lifted, or BLACKHOLE_MAX_S passes."""
        with trio.move_on_after(BLACKHOLE_MAX_S):
            for _ in range(int(BLACKHOLE_MAX_S / _POLL_S) + 1):
                if not self.blackhole:
                    return
                with trio.move_on_after(_POLL_S):
                    if not await stream.receive_some(RECEIVE_BYTES):
                        return  # the client closed its side

    async def _forward(self, head: h11.Request, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self._http is not None
        headers = [(name, value) for name, value in head.headers if name.lower() not in _HOP_BY_HOP]
        target = head.target.decode("ascii", errors="replace")
        url = self.upstream + target
        forwarded_at = trio.current_time()
        try:
            response = await self._http.request(head.method.decode(), url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            self.counts["upstream_error"] += 1
            self._record(target, len(body), forwarded_at, 502)
            text = f"fault-proxy: upstream failed: {type(exc).__name__}".encode()
            return 502, [(b"content-type", b"text/plain")], text
        self.counts["forwarded"] += 1
        self._record(target, len(body), forwarded_at, response.status_code)
        kept = [(name, value) for name, value in response.headers.raw if name.lower() not in _HOP_BY_HOP]
        return response.status_code, kept, response.content

    def _record(self, target: str, body_bytes: int, forwarded_at: float, status: int) -> None:
        if self.record_calls:
            self.calls.append(CallRecord(call_name(target), body_bytes, forwarded_at, trio.current_time(), status))


@asynccontextmanager
async def running_proxy(upstream: str, **kwargs: object) -> AsyncIterator[FaultProxy]:
    """Run a FaultProxy for the duration of the block (in its own nursery)."""
    async with trio.open_nursery() as nursery:
        proxy = await nursery.start(FaultProxy(upstream, **kwargs).run)  # type: ignore[arg-type]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.proxy",
        description="A fault-injecting HTTP/1.1 proxy on loopback (latency, resets, 500s, ...).",
    )
    parser.add_argument("--listen", required=True, metavar="HOST:PORT",
                        help="loopback address to listen on (port 0: any free port)")
    parser.add_argument("--upstream", required=True, metavar="URL",
                        help="http://HOST:PORT of the server to forward to (loopback)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every request (default 0)")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus a uniform random 0..J ms per request (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--spike-rate", type=float, default=0.0, help="fraction of requests delayed by a further --spike-ms")
    parser.add_argument("--spike-ms", type=float, default=0.0)
    parser.add_argument("--stall-ms", type=float, default=500.0, help="how long a stall holds before the reset (default 500)")
    for f in fields(FaultRates):
        parser.add_argument(f"--{f.name.replace('_', '-')}-rate", dest=f.name, type=float, default=0.0, metavar="F",
                            help=f"fraction of {'connections' if f.name == 'refuse' else 'requests'} that get {f.name}")
    parser.add_argument("--counts-json", metavar="PATH", help="also write the final counts to this file")
    return parser


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


async def _serve_cli(args: argparse.Namespace, rates: FaultRates, host: str, port: int) -> dict[str, int]:
    proxy = FaultProxy(
        args.upstream, host=host, port=port, seed=args.seed, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, rates=rates
    )
    proxy.spike_rate, proxy.spike_ms, proxy.stall_ms = args.spike_rate, args.spike_ms, args.stall_ms
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            print(
                f"fault-proxy: listening on {proxy.url} -> {proxy.upstream} "
                f"(latency {args.latency_ms:g} ms, jitter {args.jitter_ms:g} ms, seed {args.seed})",
                flush=True,
            )
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
    return proxy.figures()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = _split_listen(args.listen)
        require_loopback_host(host, "--listen")
        require_loopback_url(args.upstream, "--upstream")
        rates = FaultRates(**{f.name: getattr(args, f.name) for f in fields(FaultRates)})
        if args.latency_ms < 0 or args.jitter_ms < 0 or args.spike_ms < 0 or args.stall_ms < 0:
            raise ValueError("latency, jitter, spike and stall must not be negative")
    except ValueError as exc:
        print(f"fault-proxy: {exc}", file=sys.stderr)
        return 2
    try:
        counts = trio.run(_serve_cli, args, rates, host, port)
    except OSError as exc:  # the port is taken, and the like
        print(f"fault-proxy: {exc}", file=sys.stderr)
        return 1
    line = json.dumps(counts, sort_keys=True)
    print(f"fault-proxy: counts {line}", flush=True)
    if args.counts_json:
        with open(args.counts_json, "w") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
