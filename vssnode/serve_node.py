"""`vssnode run`: serve one node's API through hypercorn until SIGINT or SIGTERM.

The node API listens on loopback unless an API token is set: without a token anyone
who can reach the port controls the node, so a non-loopback `--listen` without one is
refused at start (exit 2). The listening line is printed only once the port is bound.
With uvloop installed (`pip install 'vssnode[fast]'`) the node runs on its event loop.
"""

from __future__ import annotations

import asyncio
import logging

from node.config import ConfigError, NodeConfig
from vss.serve import is_loopback_host, parse_listen, serve_until_signalled, uvloop_factory
from vssnode.console import fail

log = logging.getLogger(__name__)


def run_node(config: NodeConfig) -> int:
    """Serve until signalled; returns the exit status."""
    try:
        host, port = parse_listen(config.listen)
    except ValueError as exc:
        return fail("vssnode", ConfigError(f"--listen: {exc}"), 2)
    if not is_loopback_host(host) and config.api_token is None:
        return fail("vssnode", ConfigError(
            f"--listen {config.listen} is not a loopback address: set an API token (--api-token-file or "
            "VSSNODE_API_TOKEN), or anyone who can reach the port controls the node"
        ), 2)
    try:
        with asyncio.Runner(loop_factory=uvloop_factory()) as runner:  # uvloop when installed
            runner.run(_serve(config))
    except ConfigError as exc:  # the data dir: another network, in use by another process
        return fail("vssnode", exc, 2)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # noqa: BLE001 -- start-up failures: the disk is full, the port is taken
        return fail("vssnode", exc, 1)  # (vss.serve.CannotListen: worded as the VSS server words it)
    return 0


async def _serve(config: NodeConfig) -> None:
    from hypercorn.config import Config

    from vssnode.http_api import create_app

    app = create_app(config)
    hyper = Config()
    hyper.bind = [config.listen]
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once

    def announce(urls: list[str]) -> None:
        print(f"vssnode: node API on {', '.join(urls)} (data dir {config.data_dir}, VSS {config.vss_url or 'off'})",
              flush=True)

    try:
        await serve_until_signalled(app, hyper, on_bound=announce)  # type: ignore[arg-type]
    except Exception:
        failed = app.extensions["vssnode"].get("failed")
        if failed is not None:  # hypercorn reports a failed startup without its cause
            raise failed from None
        raise
