"""``python -m breakhis_core``: see ``cli.py``."""

import sys

from breakhis_core.cli import main

sys.exit(main())
