"""The `vssnode` console script: `vssnode run ...` and `vssnode vss-server ...`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vssnode", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    from vss.server import cli as server_cli

    server_cli.add_arguments(commands.add_parser("vss-server", help="run the bundled VSS server"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "vss-server":
        from vss.server import cli as server_cli

        return server_cli.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
