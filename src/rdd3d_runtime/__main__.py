import sys

from rdd3d_runtime.cli import main

sys.exit(main())
