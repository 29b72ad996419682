"""``python -m rdd3d`` (and ``torchrun -m rdd3d``) run the command line."""

import sys

from rdd3d.cli import main

sys.exit(main())
