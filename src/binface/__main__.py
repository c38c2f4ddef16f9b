"""``python -m binface`` runs the ``binface`` command."""

import sys

from binface.cli import main

sys.exit(main())
