"""``qme_ext.distributed`` is :mod:`qme_ext.metrics.distributed` (evaluation and top-k of
matrices sharded over ``torch.distributed`` processes); this public path is an alias of
that module."""
import sys

from .metrics import distributed as _distributed

sys.modules[__name__] = _distributed
