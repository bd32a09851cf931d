"""Command line of the bundled VSS server: `vssnode vss-server` and `python -m vss.server`.

    vssnode vss-server [--listen 127.0.0.1:8081] [--db sqlite:///PATH | postgresql://...]
                       [--auth sigs|jwt|none] [--jwt-public-key PEM] [--max-body-bytes N]
                       [--tls-cert PEM --tls-key PEM] [--workers N] [--loop auto|asyncio|uvloop]
                       [--allow-unauthenticated-remote] [--log-level debug|info|warning|error]

Binds first, opens the database, and only then prints `listening on URL`; serves
until SIGINT or SIGTERM, finishes the requests in flight and closes the database.
Exit status 2: the configuration is wrong (a flag, URL or file); 1: it could not run
(port in use, database unreachable); each with one line on stderr saying what to do,
and a traceback only with `--log-level debug`. `app_from_env()` builds the app from
VSS_SERVER_* variables for `hypercorn vss.server.asgi:app`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING

# Only light modules at import time: `vssnode` builds this parser for every command.
from vss.errors import one_line
from vss.server.settings import (
    AUTH_MODES,
    DEFAULT_DB,
    DEFAULT_LISTEN,
    LOG_LEVELS,
    LOOPS,
    ServerConfigError,
    Settings,
    positive_int,
)

if TYPE_CHECKING:
    from hypercorn.config import Config

    from vss.server.app import VssApp

log = logging.getLogger("vss.server")

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
        help=f"address to serve on, [IPv6]:PORT for IPv6 (default {DEFAULT_LISTEN}); the base URL is "
        "http(s)://HOST:PORT/vss",
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="URL",
        help="sqlite:///PATH (sqlite:////absolute/path) or postgresql://user@host:port/db"
        f"[?schema=NAME] (default {DEFAULT_DB})",
    )
    parser.add_argument(
        "--auth", choices=AUTH_MODES, default="sigs",
        help="sigs: secp256k1 signature header, one user per key (default); jwt: RS256 bearer tokens "
        "(needs --jwt-public-key), the user is the token's sub; none: everyone is one user, local development only",
    )
    parser.add_argument(
        "--jwt-public-key", metavar="PEM", default=None,
        help="with --auth jwt: the RSA public key (PEM file) that verifies the tokens",
    )
    parser.add_argument(
        "--max-body-bytes", type=positive_int, default=Settings.max_body_bytes, metavar="N",
        help=f"refuse request bodies over N bytes with 413 (default {Settings.max_body_bytes})",
    )
    parser.add_argument("--tls-cert", metavar="PEM", default=None, help="serve https with this certificate (chain)")
    parser.add_argument("--tls-key", metavar="PEM", default=None, help="the private key of --tls-cert")
    parser.add_argument(
        "--workers", type=positive_int, default=1, metavar="N",
        help="serve from N processes on the one address (default 1); SQLite files and PostgreSQL both allow it",
    )
    parser.add_argument(
        "--loop", choices=LOOPS, default="auto",
        help="event loop: uvloop when installed (auto, the default), or force asyncio or uvloop",
    )
    parser.add_argument(
        "--allow-unauthenticated-remote", action="store_true",
        help="let --auth none listen on a non-loopback address (refused otherwise)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info",
        help="log verbosity (default info); debug adds tracebacks",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM. Returns the exit status: 0 stopped, 1 failed, 2 misconfigured."""
    configure_logging(args.log_level)
    try:
        settings = Settings.from_args(args)
        app = settings.build_app()
    except ServerConfigError as exc:
        print(f"vss-server: {exc}", file=sys.stderr)
        return 2
    if settings.auth == "none":
        print(NO_AUTH_WARNING, file=sys.stderr, flush=True)
    try:
        status = _run_workers(settings, app) if settings.workers > 1 else _run_here(settings, app)
    except KeyboardInterrupt:
        status = 0
    if status == 0:
        print("vss-server: stopped", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vss.server", description="The bundled VSS server.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def app_from_env(environ: Mapping[str, str] | None = None, *, warn: bool = True) -> VssApp:
    """The app configured by VSS_SERVER_DB, VSS_SERVER_AUTH, VSS_SERVER_JWT_PUBLIC_KEY,
    VSS_SERVER_MAX_BODY_BYTES and VSS_SERVER_ALLOW_UNAUTHENTICATED, logging at
    VSS_SERVER_LOG_LEVEL; `warn`: print the warning of `--auth none` (a worker leaves
    it to the parent, which printed it once).

    Raises ValueError (ServerConfigError) naming the variable that is wrong.
    """
    settings = Settings.from_env(os.environ if environ is None else environ)
    configure_logging(settings.log_level)
    if warn and settings.auth == "none":
        print(NO_AUTH_WARNING, file=sys.stderr, flush=True)
    return settings.build_app()


def configure_logging(level: str) -> None:
    """Log lines to stderr at `level`; hypercorn's own chatter only from warnings up, unless debugging."""
    numeric = getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hypercorn.error").setLevel(numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING))


# -- one process ------------------------------------------------------------------------------


def _run_here(settings: Settings, app: VssApp) -> int:
    from hypercorn.utils import LifespanFailureError

    from vss.serve import CannotListen, serve_until_signalled, uvloop_factory

    config = _hypercorn_config(settings)
    loop_factory = uvloop_factory() if settings.use_uvloop() else None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve_until_signalled(app, config, on_bound=lambda urls: _announce(settings, urls)))
    except LifespanFailureError:
        return _failed(f"{app.startup_error or 'the server failed to start'}; check --db and that the database is up")
    except CannotListen as exc:
        return _failed(str(exc), exc)
    except Exception as exc:
        return _failed(f"stopped: {one_line(exc)}", exc)
    return 0


# -- several processes ------------------------------------------------------------------------


def _run_workers(settings: Settings, app: VssApp) -> int:
    """`--workers N`: hypercorn's worker processes on sockets bound here, before anything is announced.

    Each worker builds its own app (`vss.server.worker`) from the settings passed in
    VSS_SERVER_* variables, and keeps its metrics in a directory shared by all of them.
    """
    from hypercorn.run import run as run_workers

    from vss.serve import CannotListen, bind_listening
    from vss.server.metrics import MULTIPROC_ENV

    try:
        asyncio.run(_probe_database(app))
    except Exception as exc:
        return _failed(f"{app.startup_error or one_line(exc)}; check --db and that the database is up", exc)
    config = _hypercorn_config(settings)
    config.workers = settings.workers
    config.worker_class = "uvloop" if settings.use_uvloop() else "asyncio"
    config.application_path = "vss.server.worker:app"
    try:
        config, urls, sockets = bind_listening(config)
    except CannotListen as exc:
        return _failed(str(exc), exc)
    try:
        with tempfile.TemporaryDirectory(prefix="vss-server-metrics-") as metrics_dir:
            os.environ.update(settings.to_env())
            os.environ[MULTIPROC_ENV] = metrics_dir
            _announce(settings, urls)
            status = run_workers(config)
    finally:
        for sock in sockets:
            sock.detach()  # hypercorn closed its sockets over the same descriptors
    if status != 0:
        return _failed(f"a worker process exited with status {status}; see the lines above")
    return 0


async def _probe_database(app: VssApp) -> None:
    """Open and close the database once, so an unreachable one fails before the workers start."""
    await app.startup()
    await app.shutdown()


# -- shared -----------------------------------------------------------------------------------


def _hypercorn_config(settings: Settings) -> Config:
    from hypercorn.config import Config

    from vss.serve import format_listen

    config = Config()
    config.bind = [format_listen(settings.host, settings.port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 10
    config.include_server_header = False
    if settings.tls_cert is not None:
        config.certfile = settings.tls_cert
        config.keyfile = settings.tls_key
    return config


def _announce(settings: Settings, urls: list[str]) -> None:
    workers = f", {settings.workers} workers" if settings.workers > 1 else ""
    print(
        f"vss-server: listening on {urls[0]}/vss (db {settings.redacted_db}, auth {settings.auth}{workers})",
        flush=True,
    )


def _failed(message: str, exc: BaseException | None = None) -> int:
    print(f"vss-server: {message}", file=sys.stderr, flush=True)
    if exc is not None and log.isEnabledFor(logging.DEBUG):
        log.debug("the failure in full:", exc_info=exc)
    return 1
