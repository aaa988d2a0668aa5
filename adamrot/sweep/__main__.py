"""``python -m adamrot.sweep SWEEP.yaml`` (the same as ``adamrot sweep``)."""
import sys

from adamrot.sweep.cli import main

sys.exit(main())
