"""Entry point of `python -m moeroute`: the pipeline walk-through."""

import sys

from ._walkthrough import main

sys.exit(main())
