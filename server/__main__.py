"""``python -m server``: same as ``ipsbench-serve``."""

import sys

from server.cli import main

sys.exit(main())
