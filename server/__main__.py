"""``python -m ipsbench.server``: same as ``ipsbench-serve``."""

import sys

from ipsbench.server.cli import main

sys.exit(main())
