"""The `vssnode` console script.

    vssnode run DATA_DIR [flags]       the node and its HTTP API
    vssnode vss-server [flags]         the bundled VSS server
    vssnode status | verify [--node URL]
    vssnode clear-fence --vss-url URL --mnemonic-file FILE [--yes]
    vssnode --version

Exit codes, for every command: 0 done, 1 a run-time failure (port in use, server
unreachable, a check that found a difference), 2 configuration (a bad flag or URL, a
data dir of another network or in use by another process). Failures print one line
saying what happened and what to do; tracebacks only with `--log-level debug`.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from typing import Any

from node import config as node_config
from vssnode.console import add_log_level, fail, setup_logging

DESCRIPTION = "A local-first node with encrypted VSS backup."
RUN_EPILOG = """\
The node starts locked. Next, from another terminal (JSON bodies need the header):
  curl -s -X POST localhost:3001/init   -H 'Content-Type: application/json' -d '{"password": "..."}'
  curl -s -X POST localhost:3001/unlock -H 'Content-Type: application/json' -d '{"password": "..."}'
Every flag has an environment twin, read by `hypercorn vssnode.asgi:app` (and by this
command for VSSNODE_API_TOKEN): VSSNODE_DATA_DIR, %s."""


def version() -> str:
    try:
        return metadata.version("vssnode")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from vss.server import cli as server_cli
    from vssnode import operator

    parser = argparse.ArgumentParser(prog="vssnode", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"vssnode {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    envs = ", ".join(option.env for option in node_config.OPTIONS)
    run = commands.add_parser(
        "run",
        help="run the node and its HTTP API",
        description="Run the node and its HTTP API. " + DESCRIPTION,
        epilog=RUN_EPILOG % envs,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(run)
    server_cli.add_arguments(commands.add_parser("vss-server", help="run the bundled VSS server"))
    operator.add_commands(commands)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `vssnode run`, one per entry of node.config.OPTIONS."""
    parser.add_argument("data_dir", metavar="DATA_DIR", help="directory of the node's database and wallet (made 0700)")
    for option in node_config.OPTIONS:
        if option.is_switch:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const=True, help=option.help)
        elif option.repeatable:
            parser.add_argument(option.flag, dest=option.field, action="append", metavar=option.metavar, help=option.help)
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, help=option.help)
    add_log_level(parser)


def config_from_args(args: argparse.Namespace) -> node_config.NodeConfig:
    """The NodeConfig of `vssnode run`: flags first, VSSNODE_API_TOKEN for the token."""
    values: dict[str, Any] = {"data_dir": args.data_dir}
    for option in node_config.OPTIONS:
        raw = getattr(args, option.field, None)
        if raw is None or option.is_switch:
            values[option.field] = raw
        elif option.repeatable:
            values[option.field] = tuple(option.parse(text) for text in raw)
        else:
            try:
                values[option.field] = option.parse(raw)
            except node_config.ConfigError as exc:
                raise node_config.ConfigError(f"{option.flag}: {exc}") from None
    if values.get("api_token") is None and values.get("api_token_file") is None:
        values["api_token"] = os.environ.get("VSSNODE_API_TOKEN") or None
    return node_config.build(values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "vss-server":
        from vss.server import cli as server_cli

        return server_cli.run(args)
    if args.command == "run":
        from vssnode.serve_node import run_node

        setup_logging(args.log_level)
        try:
            config = config_from_args(args)
        except node_config.ConfigError as exc:
            return fail("vssnode", exc, 2)
        return run_node(config)
    from vssnode import operator

    return operator.run(args)


if __name__ == "__main__":
    sys.exit(main())
