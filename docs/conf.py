"""
Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``.

The pages are Markdown (MyST); the API reference comes from the package's
docstrings, which are written in Twisted's epytext style and turned into
reStructuredText by the local ``epytext`` extension.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

project = "twisted-channel"
author = "the twisted-channel authors"
copyright = "the twisted-channel authors"

from twisted_channel import __version__  # noqa: E402

version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "epytext",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
master_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = f"twisted-channel {release}"
html_static_path: list[str] = []
