"""`python -m vss.server [--listen HOST:PORT] [--db URL] [--auth sigs|none] [--max-body-bytes N]`."""

import sys

from vss.server.cli import main

sys.exit(main())
