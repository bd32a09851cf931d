"""`hypercorn 'vssnode.asgi:app'`: the node as a plain ASGI app, configured from the
environment (VSSNODE_DATA_DIR and the VSSNODE_* twin of every `vssnode run` flag, listed
by `vssnode run --help`), so operators can use hypercorn's own TLS and logging options.
Run one worker per data dir: a data dir has one writer (a second process is refused).
Without VSSNODE_API_TOKEN the node answers only requests that came in on a loopback
address, whatever hypercorn binds (`vssnode.api_guard`).

A wrong variable stops the worker with one line on stderr naming it, and exit status 2
(as the VSS server's entry does; hypercorn 0.18's parent process reports 0 for a worker
that failed, `--workers 0` keeps the 2)."""

import sys

from node.config import ConfigError, from_env
from vssnode.http_api import create_app

try:
    app = create_app(from_env())
except ConfigError as exc:
    print(f"vssnode: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
