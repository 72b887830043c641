"""``python -m asg`` is the ``asg`` command (also what ``accelerate launch -m asg`` runs)."""

import sys

from asg.cli import main

sys.exit(main())
