"""The VSS server as a plain ASGI app, for hypercorn's own command line:

    VSS_SERVER_DB=postgresql://vss@db/vss VSS_SERVER_AUTH=sigs \
        hypercorn vss.server.asgi:app --bind 127.0.0.1:8081

Configured by VSS_SERVER_DB (default sqlite:///./.data/vss.sqlite3), VSS_SERVER_AUTH
(sigs|none, default sigs) and VSS_SERVER_MAX_BODY_BYTES (default 64 MiB). Each
hypercorn worker opens its own connections; both backends are safe to share.
"""

from vss.server.cli import app_from_env

app = app_from_env()
