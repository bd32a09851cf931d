"""The `vssnode` console script: `vssnode run DATA_DIR ...` and `vssnode vss-server ...`.

The program sits on top of the stack: it assembles the actors, the node's primitives
and the VSS protocol; nothing below imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from node import config as node_config


def build_parser() -> argparse.ArgumentParser:
    from vss.server import cli as server_cli

    parser = argparse.ArgumentParser(prog="vssnode", description="A local-first node with encrypted VSS backup.")
    commands = parser.add_subparsers(dest="command", required=True)
    node_config.add_arguments(commands.add_parser("run", help="run the node and its HTTP API"))
    server_cli.add_arguments(commands.add_parser("vss-server", help="run the bundled VSS server"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "vss-server":
        from vss.server import cli as server_cli

        return server_cli.run(args)
    return run_node(args)


def run_node(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per VSS request is noise
    try:
        config = node_config.from_args(args)
        host, port = node_config.split_listen(config.listen)
    except node_config.ConfigError as exc:
        print(f"vssnode: {exc}", file=sys.stderr)
        return 2
    if not node_config.is_loopback_host(host) and config.api_token is None:
        logging.warning("the API listens on %s without --api-token: anyone who can reach it controls the node", host)
    try:
        asyncio.run(_serve(config))
    except node_config.ConfigError as exc:
        print(f"vssnode: {exc}", file=sys.stderr)
        return 2
    return 0


async def _serve(config: node_config.NodeConfig) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from vssnode.http_api import create_app

    app = create_app(config)
    hyper = Config()
    hyper.bind = [config.listen]
    hyper.accesslog = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"vssnode: node API on http://{config.listen} (data dir {config.data_dir}, VSS {config.vss_url or 'off'})", flush=True)
    await serve(app, hyper, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    sys.exit(main())
