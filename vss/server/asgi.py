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
"""

from vss.server.cli import app_from_env

app = app_from_env()
