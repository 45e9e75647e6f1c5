"""``python -m ipsbench.matrix``: same as ``ipsbench``."""

import sys

from ipsbench.matrix.command import main

if __name__ == "__main__":
    sys.exit(main())
