"""`hypercorn 'vssnode.asgi:app'`: the node as a plain ASGI app, configured from the
environment (VSSNODE_DATA_DIR and the VSSNODE_* twin of every `vssnode run` flag, listed
by `vssnode run --help`), so operators can use hypercorn's own TLS and logging options.
Run one worker per data dir: a data dir has one writer (a second process is refused).
Without VSSNODE_API_TOKEN the node answers only requests that came in on a loopback
address, whatever hypercorn binds (`vssnode.api_guard`)."""

from node.config import from_env
from vssnode.http_api import create_app

app = create_app(from_env())
