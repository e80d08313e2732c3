"""`python -m interlace.cli`: the same as the `interlace` command."""

import sys

from interlace.cli import main

sys.exit(main())
