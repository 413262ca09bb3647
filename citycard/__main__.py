"""``python -m citycard``: the same command as ``citycard``."""

import sys

from .cli.main import main

sys.exit(main())
