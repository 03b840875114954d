"""Loading of the compiled modules and the build/runtime facts about them.

``_C`` (CPU kernels) is always built. ``_C_cuda`` exists when the package was
built with a CUDA compiler; it may still find no GPU at run time.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional

from .._version import __version__

try:
    _C = importlib.import_module("qme_ext._C")
    _C_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - a broken install
    _C = None
    _C_IMPORT_ERROR = exc

try:
    _C_cuda = importlib.import_module("qme_ext._C_cuda")
    _CUDA_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:
    _C_cuda = None
    _CUDA_IMPORT_ERROR = exc

CUDA_BUILD_HINT = (
    "qme_ext was built without its CUDA module. Rebuild it on a machine with the CUDA "
    "toolkit (nvcc on PATH): pip install --no-build-isolation -Ccmake.define.QME_CUDA=ON ."
)


class BuildError(RuntimeError):
    """The requested backend is not part of this build of qme_ext."""


def cpu_module():
    if _C is None:
        raise BuildError(f"qme_ext._C failed to import ({_C_IMPORT_ERROR}); reinstall qme_ext")
    return _C


def cuda_module():
    if _C_cuda is None:
        raise BuildError(CUDA_BUILD_HINT)
    return _C_cuda


def cuda_compiled() -> bool:
    """True when the CUDA module was built and imports."""
    return _C_cuda is not None


def cuda_available() -> bool:
    """True only when the CUDA module loaded and a GPU is visible to it and to torch."""
    if _C_cuda is None:
        return False
    try:
        if _C_cuda.device_count() <= 0:
            return False
    except Exception:
        return False
    import torch

    return bool(torch.cuda.is_available())


def get_num_threads() -> int:
    """Threads the CPU kernels use (default: all cores, or $QME_NUM_THREADS)."""
    return int(cpu_module().get_num_threads())


def set_num_threads(n: int) -> None:
    """Set the number of threads of the CPU kernels (results do not depend on it)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected an integer >= 1, got {n!r}")
    cpu_module().set_num_threads(n)


def build_config() -> dict[str, Any]:
    """Facts about this build: version, CUDA compiled/runtime/architectures, threads."""
    cfg: dict[str, Any] = {
        "version": __version__,
        "cpu_module": _C is not None,
        "threads": get_num_threads() if _C is not None else None,
        "cuda_compiled": _C_cuda is not None,
        "cuda_runtime_version": None,
        "cuda_architectures": None,
        "cuda_device_count": 0,
    }
    if _C_cuda is not None:
        rv = int(_C_cuda.runtime_version())
        cfg["cuda_runtime_version"] = f"{rv // 1000}.{(rv % 1000) // 10}"
        cfg["cuda_architectures"] = str(_C_cuda.architectures)
        try:
            cfg["cuda_device_count"] = int(_C_cuda.device_count())
        except Exception:
            cfg["cuda_device_count"] = 0
    else:
        cfg["cuda_import_error"] = str(_CUDA_IMPORT_ERROR)
    cfg["cuda_available"] = cuda_available()
    return cfg
