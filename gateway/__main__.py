"""``python -m gateway`` is the ``triton-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
