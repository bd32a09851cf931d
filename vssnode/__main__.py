"""`python -m vssnode ...`: the same as the `vssnode` console script."""

import sys

from vssnode.cli import main

sys.exit(main())
