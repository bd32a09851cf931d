"""`python -m vss.server ...`: the flags of `vssnode vss-server` (vss/server/cli.py)."""

import sys

from vss.server.cli import main

sys.exit(main())
