"""``python -m chronos``: the partition CLI (`chronos.cli`)."""

import sys

from chronos.cli import main

sys.exit(main())
