"""``python -m k2think_operator.cachefill``: the program the model cache's fill Job runs."""

import sys

from k2think_operator.cachefill import main

sys.exit(main())
