"""The HTTP face of the bundled VSS server: a small ASGI app, no web framework.

`create_app(backend, auth=..., max_body_bytes=...)` returns an ASGI callable that opens
the backend at lifespan startup and closes it at shutdown, and answers

- `POST /vss/{getObject,putObjects,deleteObject,listKeyVersions}`: refuse a body over
  the limit (413, judged by Content-Length before reading, else as it arrives),
  authorize (401), decode the protobuf (400), run the call (`vss.server.calls`), and
  answer 200 with the response message;
- `GET /health`: 200 `{"status": "ok"}` when the database answers, 503 otherwise;
- `GET /metrics`: Prometheus text (`vss.server.metrics`).

Health and metrics need no authorization. Every other method or path is 400 with an
`ErrorResponse` body, as docs/PROTOCOL.md says. A failure is an `ErrorResponse` with
its status; a fault nobody anticipated is 500 without internals in the body and one
line in the log (the traceback only at debug level).

A framework (Quart) cost about 0.46 ms of CPU per request, more than the rest of the
server together; what the protocol needs from HTTP fits in this module.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import anyio

from vss.errors import InternalServerError, InvalidRequestError, RequestTooLargeError, VssError, one_line
from vss.proto import vss_pb2
from vss.server.authorizers import Authorizer, NoAuthorizer, SignatureAuthorizer
from vss.server.backend import DEFAULT_MAX_BODY_BYTES, Backend
from vss.server.calls import CALLS, Call
from vss.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from vss.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

BASE_PATH = "/vss"
HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"
HEALTH_TIMEOUT_S = 5.0
"""A database that has not answered `/health` by then is reported unavailable."""

AuthMode = Literal["sigs", "none"]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PROTOBUF = b"application/octet-stream"
_JSON = b"application/json"


class _ClientGone(Exception):
    """The client disconnected before its request body arrived: nobody to answer."""


class VssApp:
    """The ASGI app; build it with `create_app`."""

    def __init__(
        self, backend: Backend, authorizer: Authorizer, max_body_bytes: int, metrics: ServerMetrics
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self._authorize = authorizer
        self._max_body_bytes = max_body_bytes
        self._calls: dict[str, Call] = {f"{BASE_PATH}/{name}": call for name, call in CALLS.items()}
        self.startup_error: str | None = None
        """Why the last `startup()` failed, in one line (for the command line to print)."""

    async def startup(self) -> None:
        """Open the backend (lifespan startup). On failure, `startup_error` says why, then it raises."""
        self.startup_error = None
        try:
            await self.backend.open()
        except Exception as exc:
            self.startup_error = f"cannot open the database {self.backend.describe()}: {one_line(exc)}"
            raise

    async def shutdown(self) -> None:
        """Close the backend (lifespan shutdown)."""
        await self.backend.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # Anything else (websocket) is not served: returning unanswered makes the server refuse it.

    # -- HTTP ---------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        call = self._calls.get(path)
        try:
            if call is not None and method == "POST":
                route = call.name
                status, content_type, body = await self._vss_call(call, scope, receive)
            elif method == "GET" and path == HEALTH_PATH:
                route = "health"
                status, content_type, body = await self._health()
            elif method == "GET" and path == METRICS_PATH:
                route = "metrics"
                status, content_type, body = 200, METRICS_CONTENT_TYPE.encode(), self.metrics.render()
            else:
                route = "other"
                status, content_type, body = _error(
                    InvalidRequestError(f"{method} {path[:200]} is not a VSS call; POST to {BASE_PATH}/<call>")
                )
        except _ClientGone:
            return
        except Exception as exc:  # /health or /metrics broke: still an answer, and one log line
            log.error("%s %s failed: %r", method, path[:200], exc, exc_info=log.isEnabledFor(logging.DEBUG))
            route = "other" if call is None else call.name
            status, content_type, body = _error(InternalServerError("internal server error"))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})
        self.metrics.request(route, status, time.perf_counter() - started)

    async def _vss_call(self, call: Call, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        try:
            authorization = declared = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value
                elif name == b"content-length":
                    declared = value
            if declared is not None and declared.isdigit() and int(declared) > self._max_body_bytes:
                raise self._too_large()
            user = self._authorize(None if authorization is None else authorization.decode("latin-1"))
            body = await self._read_body(receive)
            reply, items = await call.handle(self.backend, user, body)
        except _ClientGone:
            raise
        except VssError as exc:
            if isinstance(exc, InternalServerError):
                log.error("VSS %s failed: %s%s", call.name, exc, f" (cause: {exc.__cause__!r})" if exc.__cause__ else "")
            return _error(exc)
        except Exception as exc:
            # One line; the traceback only for those who asked for debug logs.
            log.error("VSS %s failed: %r", call.name, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            return _error(InternalServerError("internal server error"))
        if call.writes:
            self.metrics.items(written=items)
        else:
            self.metrics.items(read=items)
        return 200, _PROTOBUF, reply

    async def _read_body(self, receive: Receive) -> bytes:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: one piece
            if len(body) > self._max_body_bytes:
                raise self._too_large()
            return body
        chunks = [body]
        size = len(body)
        while True:
            if size > self._max_body_bytes:
                raise self._too_large()  # stop reading: the rest is never buffered
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        if size > self._max_body_bytes:
            raise self._too_large()
        return b"".join(chunks)

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(f"request body is over this server's limit of {self._max_body_bytes} bytes")

    async def _health(self) -> tuple[int, bytes, bytes]:
        try:
            with anyio.fail_after(HEALTH_TIMEOUT_S):
                await self.backend.ping()
        except Exception as exc:
            log.warning("health check: the database does not answer: %r", exc)
            problem = "the database did not answer in time" if isinstance(exc, TimeoutError) else (
                f"the database does not answer ({type(exc).__name__})"
            )
            return 503, _JSON, json.dumps({"status": "unavailable", "error": problem}).encode()
        return 200, _JSON, b'{"status": "ok"}'

    # -- lifespan -------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception:
                    log.debug("the backend failed to open", exc_info=True)
                    await send({"type": "lifespan.startup.failed", "message": self.startup_error})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed", "message": f"closing the database: {one_line(exc)}"})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    backend: Backend,
    *,
    auth: AuthMode | Authorizer = "sigs",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> VssApp:
    """An ASGI app serving the VSS protocol from `backend`.

    `auth="sigs"` requires the signature Authorization header and partitions data by
    the signer's public key; `auth="none"` makes every caller one shared user (local
    development only); any `Authorizer` (such as `JwtAuthorizer`) may be passed
    instead. Bodies over `max_body_bytes` are refused with 413.
    """
    authorizer: Authorizer
    if auth == "sigs":
        authorizer = SignatureAuthorizer()
    elif auth == "none":
        authorizer = NoAuthorizer()
    elif callable(auth) and not isinstance(auth, str):
        authorizer = auth
    else:
        raise ValueError(f"auth must be 'sigs', 'none' or an Authorizer, not {auth!r}")
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    return VssApp(backend, authorizer, max_body_bytes, ServerMetrics())


def _error(exc: VssError) -> tuple[int, bytes, bytes]:
    code: Any = exc.code  # an ErrorCode value; the stubs want the enum type
    body = vss_pb2.ErrorResponse(error_code=code, message=str(exc)).SerializeToString()
    return exc.status, _PROTOBUF, body
