"""What every `vssnode` command shares on the console: logging, and failing in one line."""

from __future__ import annotations

import argparse
import logging
import sys

from vss.errors import one_line


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="how much to log (default info); debug also prints tracebacks",
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per VSS request is noise


def fail(command: str, exc: BaseException, status: int) -> int:
    """One line on stderr (the traceback too at debug level), and the exit status."""
    text = str(exc).strip().splitlines()
    print(f"{command}: {text[-1] if text else one_line(exc)}", file=sys.stderr)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.error("%s failed", command, exc_info=exc)
    return status
