"""
``python -m bench``: see L{bench._runner.main}.
"""

from bench._runner import main

raise SystemExit(main())
