"""``python -m growthhub_async``: the same as the ``growthhub-async`` command."""

import sys

from growthhub_async.console import main

sys.exit(main())
