import sys

from adamrot.report.cli import main

sys.exit(main())
