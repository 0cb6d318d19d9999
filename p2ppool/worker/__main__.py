"""``python -m p2ppool.worker``: volunteer this machine (see :mod:`p2ppool.worker.cli`)."""

import sys

from .cli import main

sys.exit(main())
