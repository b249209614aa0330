"""`python -m batchserve` is the `batchserve` command."""

import sys

from batchserve.cli import main

sys.exit(main())
