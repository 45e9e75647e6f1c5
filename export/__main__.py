import sys

from ipsbench.export.cli import main

sys.exit(main())
