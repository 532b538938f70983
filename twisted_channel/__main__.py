"""
C{python -m twisted_channel}: the same as the C{twisted-channel} command.
"""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
