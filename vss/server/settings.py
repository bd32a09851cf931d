"""The bundled server's configuration, checked in one place, from flags or environment.

`Settings` holds what the app needs (database, authorization, body limit) and how the
command line serves it (address, TLS, workers, event loop, log level). `from_args`
reads the flags of `vssnode vss-server`, `from_env` the VSS_SERVER_* variables of
`hypercorn vss.server.asgi:app`; both raise `ServerConfigError` (a ValueError) with one
line naming the flag or variable, and `build_app()` makes the ASGI app. `to_env()`
hands the same settings to hypercorn worker processes.

Nothing is opened here: a database that does not answer is a run-time failure, found
when the app starts.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vss.serve import format_listen, is_loopback_host, parse_listen
from vss.server.backend import DEFAULT_MAX_BODY_BYTES, redact_url
from vss.server.engines import open_backend

if TYPE_CHECKING:
    from vss.server.app import VssApp
    from vss.server.authorizers import Authorizer

# The app, its authorizers and their libraries are imported where they are used:
# `vssnode` builds the server's flags for every command, the node's included.

DEFAULT_LISTEN = "127.0.0.1:8081"
DEFAULT_DB = "sqlite:///./.data/vss.sqlite3"
AUTH_MODES = ("sigs", "jwt", "none")
LOOPS = ("auto", "asyncio", "uvloop")
LOG_LEVELS = ("debug", "info", "warning", "error")

AuthMode = Literal["sigs", "jwt", "none"]
Loop = Literal["auto", "asyncio", "uvloop"]

ENV_DB = "VSS_SERVER_DB"
ENV_AUTH = "VSS_SERVER_AUTH"
ENV_MAX_BODY_BYTES = "VSS_SERVER_MAX_BODY_BYTES"
ENV_JWT_PUBLIC_KEY = "VSS_SERVER_JWT_PUBLIC_KEY"
ENV_ALLOW_UNAUTHENTICATED = "VSS_SERVER_ALLOW_UNAUTHENTICATED"
ENV_LOG_LEVEL = "VSS_SERVER_LOG_LEVEL"
_TRUE = ("1", "true", "yes")


class ServerConfigError(ValueError):
    """The configuration is wrong: a flag, a URL, a file. The message is one line."""


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured by. The app's part: db, auth, jwt_public_key,
    max_body_bytes. The command line's part: the rest (`from_env` leaves it at the defaults)."""

    db: str = DEFAULT_DB
    auth: AuthMode = "sigs"
    jwt_public_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    host: str = "127.0.0.1"
    port: int = 8081
    allow_unauthenticated_remote: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int = 1
    loop: Loop = "auto"
    log_level: str = "info"

    # -- sources ------------------------------------------------------------------------

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """From the flags `add_arguments` defines; ServerConfigError if they do not fit together."""
        try:
            host, port = parse_listen(args.listen)
        except ValueError as exc:
            raise ServerConfigError(f"--listen: {exc}") from None
        settings = cls(
            db=args.db,
            auth=args.auth,
            jwt_public_key=args.jwt_public_key,
            max_body_bytes=args.max_body_bytes,
            host=host,
            port=port,
            allow_unauthenticated_remote=args.allow_unauthenticated_remote,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            workers=args.workers,
            loop=args.loop,
            log_level=args.log_level,
        )
        settings._check_serving()
        settings._check_app(flags=True)
        return settings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """From VSS_SERVER_* variables (for `hypercorn vss.server.asgi:app`).

        The app cannot know the address hypercorn binds, so `VSS_SERVER_AUTH=none` needs
        `VSS_SERVER_ALLOW_UNAUTHENTICATED=1` as well, wherever it listens.
        """
        auth = env.get(ENV_AUTH) or "sigs"
        if auth not in AUTH_MODES:
            raise ServerConfigError(f"{ENV_AUTH} must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
        raw_limit = env.get(ENV_MAX_BODY_BYTES) or str(DEFAULT_MAX_BODY_BYTES)
        try:
            max_body_bytes = positive_int(raw_limit)
        except argparse.ArgumentTypeError as exc:
            raise ServerConfigError(f"{ENV_MAX_BODY_BYTES}: {exc}") from None
        allowed = (env.get(ENV_ALLOW_UNAUTHENTICATED) or "").lower() in _TRUE
        if auth == "none" and not allowed:
            raise ServerConfigError(
                f"{ENV_AUTH}=none lets anyone read and overwrite every store; the app cannot tell whether "
                f"it listens on loopback only, so set {ENV_ALLOW_UNAUTHENTICATED}=1 as well to confirm"
            )
        level = (env.get(ENV_LOG_LEVEL) or "info").lower()
        if level not in LOG_LEVELS:
            raise ServerConfigError(f"{ENV_LOG_LEVEL} must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
        settings = cls(
            db=env.get(ENV_DB) or DEFAULT_DB,
            auth=auth,  # type: ignore[arg-type]  # checked against AUTH_MODES above
            jwt_public_key=env.get(ENV_JWT_PUBLIC_KEY) or None,
            max_body_bytes=max_body_bytes,
            allow_unauthenticated_remote=allowed,
            log_level=level,
        )
        settings._check_app(flags=False)
        return settings

    def to_env(self) -> dict[str, str]:
        """The VSS_SERVER_* variables that make `from_env` rebuild the app's part of these settings."""
        env = {
            ENV_DB: self.db,
            ENV_AUTH: self.auth,
            ENV_MAX_BODY_BYTES: str(self.max_body_bytes),
            ENV_LOG_LEVEL: self.log_level,
            # The command line has applied the loopback rule already.
            ENV_ALLOW_UNAUTHENTICATED: "1" if self.auth == "none" else "",
        }
        if self.jwt_public_key is not None:
            env[ENV_JWT_PUBLIC_KEY] = self.jwt_public_key
        return env

    # -- checks ------------------------------------------------------------------------

    def _check_app(self, *, flags: bool) -> None:
        def name(flag: str, env: str) -> str:  # as the source spells it
            return f"--{flag}" if flags else env

        try:
            open_backend(self.db)
        except ValueError as exc:
            raise ServerConfigError(f"{name('db', ENV_DB)}: {exc}") from None
        if self.auth == "jwt":
            if not self.jwt_public_key:
                raise ServerConfigError(
                    f"{name('auth', ENV_AUTH)} jwt needs {name('jwt-public-key', ENV_JWT_PUBLIC_KEY)} PEM"
                )
            self.authorizer()  # reads and checks the key file
        elif self.jwt_public_key:
            raise ServerConfigError(
                f"{name('jwt-public-key', ENV_JWT_PUBLIC_KEY)} is only for {name('auth', ENV_AUTH)} jwt"
            )

    def _check_serving(self) -> None:
        if self.auth == "none" and not is_loopback_host(self.host) and not self.allow_unauthenticated_remote:
            raise ServerConfigError(
                f"--auth none on {format_listen(self.host, self.port)} would let anyone on the network read and "
                "overwrite every store; listen on loopback, or add --allow-unauthenticated-remote"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServerConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_cert is not None and self.tls_key is not None:
            for flag, path in (("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key)):
                if not Path(path).is_file():
                    raise ServerConfigError(f"{flag} {path}: no such file")
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
            except ssl.SSLError as exc:
                raise ServerConfigError(
                    f"--tls-cert {self.tls_cert} / --tls-key {self.tls_key}: not a PEM certificate and its "
                    f"private key ({exc.reason or exc})"
                ) from None
            except OSError as exc:
                raise ServerConfigError(f"--tls-cert/--tls-key: cannot read {exc.filename or 'a file'}: {exc.strerror}") from None
        if self.workers > 1 and self.db.startswith("sqlite:///:memory:"):
            raise ServerConfigError("--workers: an in-memory SQLite database cannot be shared between processes")
        if self.loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise ServerConfigError("--loop uvloop: uvloop is not installed (pip install 'vssnode[fast]')") from None

    # -- products -----------------------------------------------------------------------

    @property
    def redacted_db(self) -> str:
        return redact_url(self.db)

    def use_uvloop(self) -> bool:
        """uvloop when asked for, or (auto) when it is installed."""
        if self.loop == "asyncio":
            return False
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return False
        return True

    def authorizer(self) -> Authorizer:
        from vss.server.authorizers import JwtAuthorizer, NoAuthorizer, SignatureAuthorizer

        if self.auth == "jwt":
            assert self.jwt_public_key is not None
            try:
                return JwtAuthorizer.from_file(self.jwt_public_key)
            except ValueError as exc:
                raise ServerConfigError(str(exc)) from None
        if self.auth == "none":
            return NoAuthorizer()
        return SignatureAuthorizer()

    def build_app(self) -> VssApp:
        """The ASGI app these settings describe (the database is opened at lifespan startup)."""
        from vss.server.app import create_app

        return create_app(open_backend(self.db), auth=self.authorizer(), max_body_bytes=self.max_body_bytes)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value
