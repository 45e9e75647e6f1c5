"""``python -m ipsbench.server``: same as ``ipsbench-serve``."""

import sys

from ipsbench.server.cli import main

if __name__ == "__main__":  # not when a ``--frontends`` child process imports this module as its parent's main
    sys.exit(main())
