"""``python -m bckd_pipeline.cli``."""

import sys

from . import main

sys.exit(main())
