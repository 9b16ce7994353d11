"""Sphinx configuration of the documentation site (``tox -e docs``, ./scripts/test).

The pages are Markdown (MyST), so they read the same on a code host as in the built site. Diagrams are
mermaid code fences, drawn by the browser (sphinxcontrib-mermaid): the build needs no network and no
system package. Warnings are errors (``-W``), so a broken cross-reference or a docstring autodoc cannot
read fails the build.
"""

from __future__ import annotations

import importlib.metadata

project = "modelrunner"
author = "modelrunner developers"
copyright = "modelrunner developers, MIT-0"
release = importlib.metadata.version("modelrunner")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxcontrib.mermaid",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# ```mermaid fences become diagrams here and stay plain fences elsewhere.
myst_fence_as_directive = ["mermaid"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Type hints name classes from numpy, botocore and GDAL that this site does not document.
nitpicky = False

html_theme = "alabaster"
html_title = f"modelrunner {release}"
