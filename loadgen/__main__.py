import sys

from ipsbench.loadgen.cli import main

sys.exit(main())
