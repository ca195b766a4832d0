"""`python -m moe_evidence`: the same as the `moe-evidence` command."""

import sys

from moe_evidence.cli import main

sys.exit(main())
