"""qme_ext: quality-aware biometric score fusion (QME) and an exact evaluation engine.

Public modules: :mod:`qme_ext.metrics` (Rank-k/CMC, mAP, TAR@FAR, FNIR@FPIR, ROC/DET/EER),
:mod:`qme_ext.io` (HDF5 score files), :mod:`qme_ext.fusion` (normalisation and baseline
fusion). Kernels run on CPU (always) and CUDA (when built with nvcc and a GPU is visible).
"""
from ._version import __version__
from .ops.backend import (build_config, cuda_available, cuda_compiled, get_num_threads,
                          set_num_threads)

__all__ = [
    "__version__",
    "build_config",
    "cuda_available",
    "cuda_compiled",
    "get_num_threads",
    "set_num_threads",
    "topk",
]


def __getattr__(name):
    # qme_ext.topk is imported on first use: `import qme_ext` stays free of torch.library work.
    if name == "topk":
        from .top_k import topk

        return topk
    raise AttributeError(f"module 'qme_ext' has no attribute {name!r}")
