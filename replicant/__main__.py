"""``python -m replicant``: the same as the ``replicant`` command."""

from __future__ import annotations

import sys

from replicant.cli import main

if __name__ == "__main__":
    sys.exit(main())
