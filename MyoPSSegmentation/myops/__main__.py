"""``python -m myops`` runs the ``myops`` command."""

import sys

from .cli import main

sys.exit(main())
