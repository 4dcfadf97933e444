"""``python -m tcomp_utils.figures``: see :mod:`tcomp_utils.figures.cli`."""
import sys

from .cli import main

sys.exit(main())
