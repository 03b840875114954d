"""Docstrings that are not valid reStructuredText are shown verbatim.

The package's docstrings are written as plain prose with reST markup where it helps;
a docstring that docutils would warn about (an odd indent, ``|x|`` read as a
substitution) would otherwise fail the ``-W`` build for a reason unrelated to the docs.
Each docstring is parsed on its own first (Sphinx roles replaced by literals). If that
parse reports a problem, the same text with its ``|`` escaped (absolute values and norms,
not substitutions) is tried; if that still fails, the docstring is rendered as a
wrapped literal block, and the object's name is logged at the ``info`` level
(``sphinx-build -v`` lists them, so they can be mended).
"""
import io
import re

from docutils.core import publish_doctree
from sphinx.util import logging

logger = logging.getLogger(__name__)
_ROLE = re.compile(r":(?:py:)?[a-z]+:`([^`]*)`")
_DIRECTIVE = re.compile(r"^\s*\.\. (versionadded|versionchanged|deprecated|seealso|note|"
                        r"warning|math|code-block|plot)::", re.M)


def _is_clean_rst(text: str) -> bool:
    text = _ROLE.sub(r"``\1``", text)
    if _DIRECTIVE.search(text):
        return True  # Sphinx directives: leave them to Sphinx
    stream = io.StringIO()
    publish_doctree(text, settings_overrides={"warning_stream": stream, "report_level": 2,
                                              "halt_level": 5, "file_insertion_enabled": False,
                                              "raw_enabled": False})
    return stream.getvalue() == ""


def _process(app, what, name, obj, options, lines):
    if not lines or _is_clean_rst("\n".join(lines)):
        return
    escaped = [ln.replace("|", r"\|") for ln in lines]
    if "|" in "".join(lines) and _is_clean_rst("\n".join(escaped)):
        lines[:] = escaped
        return
    logger.info("docstring of %s is not valid reST: shown verbatim", name)
    body = ["   " + ln if ln.strip() else "" for ln in lines]
    lines[:] = [".. code-block:: text", "   :class: docstring-verbatim", ""] + body + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
