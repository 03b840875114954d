"""``qme_ext.streaming`` is :mod:`qme_ext.metrics.streaming` (out-of-core evaluation of
score files larger than memory); this public path is an alias of that module."""
import sys

from .metrics import streaming as _streaming

sys.modules[__name__] = _streaming
