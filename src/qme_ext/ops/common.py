"""What every ``qme_ext::<op>`` wrapper shares: dtype codes, the raw-address
descriptors handed to the pybind11 modules, the module/stream lookup by device, the
argument checks of CSR row lists and vectors, and the CUDA device guard.

Each op takes torch tensors, allocates its outputs (kernels never allocate), picks
the CPU or CUDA twin by device and passes raw addresses to the pybind11 module.
"""
from __future__ import annotations

import torch

from . import backend as _backend

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
SCORE_DTYPES = tuple(DTYPE_CODES)


def matrix_descriptor(t: torch.Tensor) -> tuple:
    """(address, dtype code, rows, cols, row stride, col stride) of a 2-D tensor."""
    return (t.data_ptr(), DTYPE_CODES[t.dtype], t.shape[0], t.shape[1], t.stride(0), t.stride(1))


def module_and_stream(device: torch.device):
    """The kernel module for `device`, and the trailing args of its bindings that take
    no workspace: () on the CPU, (current stream,) on CUDA."""
    if device.type == "cpu":
        return _backend.cpu_module(), ()
    if device.type == "cuda":
        return _backend.cuda_module(), (torch.cuda.current_stream(device).cuda_stream,)
    raise ValueError(f"scores: unsupported device {device}; expected cpu or cuda")


def module_and_extra(device: torch.device, workspace_query=None):
    """The kernel module for `device`, the trailing (workspace, bytes, stream) args of a
    CUDA binding (none on the CPU), and the workspace tensor, which the caller keeps
    alive until the kernel is enqueued. ``workspace_query(cuda_module)`` gives the
    bytes; it is asked on CUDA only."""
    mod, stream = module_and_stream(device)
    if device.type == "cpu":
        return mod, (), None
    nbytes = int(workspace_query(mod)) if workspace_query is not None else 0
    ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    return mod, (ws.data_ptr(), nbytes, *stream), ws


def check_vector(t: torch.Tensor, name: str, n, dtype: torch.dtype, device) -> None:
    """`t` must be 1-D with `n` elements (any number when None), of `dtype`, on `device`:
    the kernels index with it. (A CUDA kernel cannot throw: this is checked before any
    pointer is used.)"""
    if t.dim() != 1 or (n is not None and t.shape[0] != n) or t.dtype != dtype:
        shape = f"({n},)" if n is not None else "(n,)"
        raise ValueError(f"{name}: expected a {dtype} tensor of shape {shape}, got {t.dtype} "
                         f"of shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: must be on the inputs' device ({device}), got {t.device}")


def check_row_csr(scores: torch.Tensor, offsets_name: str, offsets: torch.Tensor,
                  members: tuple) -> tuple[int, int]:
    """A CSR list per row of `scores`: `offsets` (P + 1,) int64, non-decreasing from 0 to
    nnz; each of `members` = ((name, tensor, dtype), ...) 1-D with nnz entries; all on the
    scores' device. Returns (nnz, the longest row)."""
    dev = scores.device
    check_vector(offsets, offsets_name, scores.shape[0] + 1, torch.int64, dev)
    name0, t0, dtype0 = members[0]
    check_vector(t0, name0, None, dtype0, dev)
    nnz = t0.shape[0]
    for name, t, dtype in members[1:]:
        check_vector(t, name, nnz, dtype, dev)
    offs = offsets.cpu()
    if int(offs[0]) != 0 or int(offs[-1]) != nnz or bool((offs[1:] < offs[:-1]).any()):
        raise ValueError(f"{offsets_name}: expected non-decreasing offsets from 0 to {nnz}")
    return nnz, (int((offs[1:] - offs[:-1]).max()) if offs.numel() > 1 else 0)


def device_guard(t: torch.Tensor):
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    import contextlib

    return contextlib.nullcontext()
