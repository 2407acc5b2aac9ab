"""`python -m gpubatch.cli`: the same as the `gpubatch` console script."""

import sys

from gpubatch.cli.main import main

sys.exit(main())
