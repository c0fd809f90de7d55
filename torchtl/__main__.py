"""``python -m torchtl ...``: the same as the ``torchtl`` command."""
import sys

from torchtl.tools.cli import main

sys.exit(main())
