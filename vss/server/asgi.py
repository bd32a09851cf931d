"""The VSS server as a plain ASGI app, for hypercorn's own command line:

    VSS_SERVER_DB=postgresql://vss@db/vss VSS_SERVER_AUTH=sigs \
        hypercorn vss.server.asgi:app --bind 127.0.0.1:8081

Configured by VSS_SERVER_DB (default sqlite:///./.data/vss.sqlite3), VSS_SERVER_AUTH
(sigs|jwt|none, default sigs), VSS_SERVER_JWT_PUBLIC_KEY (a PEM file, for jwt),
VSS_SERVER_MAX_BODY_BYTES (default 64 MiB), VSS_SERVER_ALLOW_UNAUTHENTICATED (1 to
confirm VSS_SERVER_AUTH=none: the app cannot know whether hypercorn binds loopback
only) and VSS_SERVER_LOG_LEVEL (debug|info|warning|error, default info). TLS, the
address and worker processes are hypercorn's own flags. Each hypercorn worker opens
its own connections; both backends are safe to share.

A wrong variable stops the worker with one line on stderr naming it, and exit status 2
(hypercorn 0.18's parent process reports 0 for a worker that failed; with `--workers 0`
the app runs in hypercorn's own process and its status is 2).
"""

import sys

from vss.server.cli import app_from_env
from vss.server.settings import ServerConfigError

try:
    app = app_from_env()
except ServerConfigError as exc:
    print(f"vss-server: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
