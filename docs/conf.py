"""Sphinx configuration of the qme_ext documentation.

Built offline (no intersphinx, no remote images) with warnings as errors by
``tests/test_docs.py``:  ``sphinx-build -W -b html docs <out>``. Local extensions live in
``docs/_ext``: ``cliref`` (the CLI reference from the argparse parser), ``benchresults``
(tables from ``benchmarks/*.json``), ``docstrings`` (docstrings that are not valid
reStructuredText are shown verbatim instead of failing the build) and ``no_mailto``
(``TAR@FAR`` is a metric, not an e-mail address).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
# qme_ext itself is imported from wherever Python finds it: the installed package, or a
# checkout with `PYTHONPATH=src` (tests/test_docs.py passes the one the tests import).

project = "qme_ext"
author = "the qme_ext developers"
copyright = "the qme_ext developers"
try:
    from qme_ext._version import __version__ as release
except Exception:  # pragma: no cover - docs without the package
    release = "0.1.0"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "docstrings",
    "no_mailto",
    "cliref",
    "benchresults",
]
# math: MathJax is loaded by the reader's browser; the build itself needs no network

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "none"          # signatures stay readable; shapes are in the docstrings

templates_path = []
exclude_patterns = ["_build", "_ext"]
root_doc = "index"
html_theme = "alabaster"
html_static_path = ["_static"]
html_css_files = ["qme.css"]
html_title = "qme_ext"
html_theme_options = {"description": "Quality-aware biometric fusion and exact evaluation",
                      "fixed_sidebar": True, "page_width": "1100px"}
pygments_style = "sphinx"
