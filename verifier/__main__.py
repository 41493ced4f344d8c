"""``python -m verifier ...`` is the ``verify`` command (for environments without the script)."""
import sys

from .cli import main

sys.exit(main())
