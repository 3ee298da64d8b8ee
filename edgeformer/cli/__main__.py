"""``python -m edgeformer.cli``: the same as the ``edgeformer`` console script."""

import sys

from edgeformer.cli import main

sys.exit(main())
