"""``python -m cumulus_jupyter.kernel -f CONNECTION_FILE``: what installed kernelspecs run."""

import sys

from cumulus_jupyter.kernel.launch import main

sys.exit(main())
