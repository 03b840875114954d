"""``python -m qme_ext`` runs the ``qme-ext`` command line (see :mod:`qme_ext.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
