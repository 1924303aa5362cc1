"""Sphinx configuration for the hyperst documentation."""

import os
from importlib.metadata import version as _version

project = "hyperst"
author = "The hyperst developers"
copyright = "2026, the hyperst developers"
release = _version("hyperst")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_typehints = "signature"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
nb_execution_mode = "off"
html_theme = "sphinx_book_theme"
html_title = "hyperst"
# the tutorials are the notebooks of ../notebooks (docs/tutorials links there), stored with the outputs of running
# them; the docs build never executes them
exclude_patterns = ["_build", "**.ipynb_checkpoints", "tutorials/README.md"]
# links into other projects' docs need their inventories from the web; an offline build (CI here) skips them
_OFFLINE = os.environ.get("HYPERST_DOCS_OFFLINE", "") not in ("", "0")
intersphinx_mapping = {} if _OFFLINE else {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
}
