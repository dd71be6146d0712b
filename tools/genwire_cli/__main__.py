"""``python -m genwire_cli`` is the ``genwire`` command."""

import sys

from genwire_cli.main import main

sys.exit(main())
