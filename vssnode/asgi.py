"""`hypercorn 'vssnode.asgi:app'`: the node as a plain ASGI app, configured from the
environment (VSSNODE_DATA_DIR, VSSNODE_NETWORK, VSSNODE_VSS_URL, VSSNODE_VSS_ALLOW_HTTP,
VSSNODE_VSS_ALLOW_EMPTY_RESTORE, VSSNODE_API_TOKEN, VSSNODE_RETRY_QUEUE_CAPACITY), so operators can use hypercorn's
own workers, TLS and logging options. Run one worker per data dir: a data dir has one
writer."""

from vssnode.http_api import create_app
from node.config import from_env

app = create_app(from_env())
