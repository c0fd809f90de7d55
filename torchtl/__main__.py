"""``python -m torchtl ...``: the same as the ``torchtl`` command."""
import sys

from torchtl.cli import main

sys.exit(main())
