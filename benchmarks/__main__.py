"""``python -m benchmarks [--quick] [--json]``."""
import sys

from .run import main

sys.exit(main())
