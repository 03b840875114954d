"""Built-in data sets: :func:`make_example_scoreset` (synthetic score file (docs/definitions.rst, §1)).

Layer: above ``qme_ext.io`` (it builds ScoreSets), which is all it imports of qme_ext.
"""
from .example import make_example_scoreset

__all__ = ["make_example_scoreset"]
