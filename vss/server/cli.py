"""Command line of the bundled VSS server: `vssnode vss-server` and `python -m vss.server`.

    vssnode vss-server [--listen 127.0.0.1:8081] [--db sqlite:///PATH | postgresql://...]
                       [--auth sigs|none] [--max-body-bytes N]

Serves through hypercorn's asyncio `serve()` until SIGINT or SIGTERM, then finishes the
requests in flight and closes the database. `app_from_env()` builds the same app from
VSS_SERVER_* variables for `hypercorn vss.server.asgi:app`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

# Quart and hypercorn are imported where they are used: `vssnode` builds this parser
# for every command, and they cost a third of a second to import.
from vss.server.backend import DEFAULT_MAX_BODY_BYTES, redact_url
from vss.server.engines import open_backend

if TYPE_CHECKING:
    from hypercorn.config import Config
    from quart import Quart

DEFAULT_LISTEN = "127.0.0.1:8081"
DEFAULT_DB = "sqlite:///./.data/vss.sqlite3"
AUTH_MODES = ("sigs", "none")

NO_AUTH_WARNING = """\
**********************************************************************
WARNING: vss-server runs with --auth none: NO AUTHORIZATION.
Every caller is the same user and can read, overwrite and delete every
store. Use this for local development only, never on a shared network.
**********************************************************************"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's flags to `parser` (a subcommand parser or a standalone one)."""
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}); the base URL is http://HOST:PORT/vss",
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="URL",
        help="sqlite:///PATH (sqlite:////absolute/path) or postgresql://user@host:port/db"
        f"[?schema=NAME] (default {DEFAULT_DB})",
    )
    parser.add_argument(
        "--auth", choices=AUTH_MODES, default="sigs",
        help="sigs: secp256k1 signature header, one user per key (default); "
        "none: everyone is one user, local development only",
    )
    parser.add_argument(
        "--max-body-bytes", type=_positive_int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
        help=f"refuse request bodies over N bytes with 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. Returns the process exit status (2: bad arguments)."""
    from hypercorn.config import Config

    from vss.server.app import create_app

    try:
        bind = parse_listen(args.listen)
        backend = open_backend(args.db)
    except ValueError as exc:
        print(f"vss-server: {exc}", file=sys.stderr)
        return 2
    if args.auth == "none":
        print(NO_AUTH_WARNING, file=sys.stderr, flush=True)
    app = create_app(backend, auth=args.auth, max_body_bytes=args.max_body_bytes)
    where = f"http://{bind}/vss"

    @app.before_serving
    async def announce() -> None:
        # Runs once the database is open, just before hypercorn binds.
        print(
            f"vss-server: listening on {where} (db {redact_url(args.db)}, auth {args.auth})",
            flush=True,
        )

    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.graceful_timeout = 10
    try:
        asyncio.run(_serve_until_signalled(app, config))
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # startup failures: database unreachable, port taken, ...
        print(f"vss-server: stopped: {_one_line(exc)}", file=sys.stderr)
        return 1
    print("vss-server: stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vss.server", description="The bundled VSS server.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def app_from_env(environ: Mapping[str, str] | None = None) -> Quart:
    """The app configured by VSS_SERVER_DB, VSS_SERVER_AUTH, VSS_SERVER_MAX_BODY_BYTES.

    Raises ValueError naming the variable that is wrong.
    """
    from vss.server.app import create_app

    env = os.environ if environ is None else environ
    db = env.get("VSS_SERVER_DB") or DEFAULT_DB
    auth = env.get("VSS_SERVER_AUTH") or "sigs"
    if auth not in AUTH_MODES:
        raise ValueError(f"VSS_SERVER_AUTH must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
    raw_limit = env.get("VSS_SERVER_MAX_BODY_BYTES") or str(DEFAULT_MAX_BODY_BYTES)
    try:
        max_body_bytes = _positive_int(raw_limit)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"VSS_SERVER_MAX_BODY_BYTES: {exc}") from None
    try:
        backend = open_backend(db)
    except ValueError as exc:
        raise ValueError(f"VSS_SERVER_DB: {exc}") from None
    if auth == "none":
        print(NO_AUTH_WARNING, file=sys.stderr, flush=True)
    return create_app(backend, auth=auth, max_body_bytes=max_body_bytes)  # type: ignore[arg-type]


def parse_listen(listen: str) -> str:
    """Check HOST:PORT (or [IPv6]:PORT) and return it as hypercorn's bind string."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen wants HOST:PORT (e.g. {DEFAULT_LISTEN}), got {listen!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"--listen: write an IPv6 address in brackets, e.g. [::1]:8081, got {listen!r}")
    return f"{host}:{int(port)}"


async def _serve_until_signalled(app: Quart, config: Config) -> None:
    from hypercorn.asyncio import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(app, config, shutdown_trigger=stop.wait)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")
