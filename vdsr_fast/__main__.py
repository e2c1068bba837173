"""``python -m vdsr_fast ...``: the ``vdsr-fast`` command (for environments where the script is not on PATH)."""

import sys

from .cli import main

sys.exit(main())
