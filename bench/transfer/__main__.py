"""``python -m bench.transfer``: see the package docstring."""

import sys

from bench.transfer import main

sys.exit(main())
