"""Built-in data sets: :func:`make_example_scoreset` (synthetic SPEC §1 score file)."""
from .example import make_example_scoreset

__all__ = ["make_example_scoreset"]
