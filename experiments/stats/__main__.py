"""``python -m experiments.stats`` — see ``experiments.stats.cli``."""

import sys

from experiments.stats.cli import main

sys.exit(main())
