"""Custom ops of the quality-aware recognition package (docs/definitions.rst, §5).

``qme_ext::qmagface_epilogue``  -- the QMagFace score adjustment of one similarity
tile, written into a (possibly strided) output tile (declared mutated).
``qme_ext::template_aggregate`` -- quality-weighted means of many variable-length
templates given CSR segment offsets, in one kernel launch; differentiable
w.r.t. features and weights.

Same pattern as ``qme_ext/ops/evaluation.py``: outputs allocated here, kernels never
allocate, CPU/CUDA twin picked by device, raw addresses passed to pybind11.
"""
from __future__ import annotations

import torch

from .common import DTYPE_CODES, check_vector, device_guard, matrix_descriptor, module_and_stream

FEATURE_DTYPES = tuple(DTYPE_CODES)


# ---- qmagface_epilogue ------------------------------------------------------------
@torch.library.custom_op("qme_ext::qmagface_epilogue", mutates_args=("out",))
def qmagface_epilogue(
    cos: torch.Tensor,  # (p, g) cosine tile, float32/float64/float16/bfloat16, any strides
    q_probe: torch.Tensor,  # (p,) float64 probe feature norms
    q_gallery: torch.Tensor,  # (g,) float64 gallery feature norms
    alpha: float,
    beta: float,
    out: torch.Tensor,  # (p, g) output tile (any float dtype, any strides), written
) -> None:
    """out = cos + min(0, beta*cos - alpha) * min(q_probe[:, None], q_gallery[None, :])."""
    if cos.dim() != 2 or out.shape != cos.shape:
        raise ValueError(f"qmagface_epilogue: cos {tuple(cos.shape)} and out "
                         f"{tuple(out.shape)} must be equal 2-D shapes")
    check_vector(q_probe, "q_probe", cos.shape[0], torch.float64, cos.device)
    check_vector(q_gallery, "q_gallery", cos.shape[1], torch.float64, cos.device)
    if out.device != cos.device:
        raise ValueError(f"out: must be on the device of cos ({cos.device}), got {out.device}")
    if cos.dtype not in DTYPE_CODES or out.dtype not in DTYPE_CODES:
        raise ValueError(f"qmagface_epilogue: unsupported dtype {cos.dtype} / {out.dtype}")
    if cos.numel() == 0:
        return
    q_probe = q_probe.contiguous()
    q_gallery = q_gallery.contiguous()
    with device_guard(cos):
        mod, extra = module_and_stream(cos.device)
        mod.qmagface_epilogue((matrix_descriptor(cos), q_probe.data_ptr(), q_gallery.data_ptr(),
                               float(alpha), float(beta), matrix_descriptor(out)), *extra)


@qmagface_epilogue.register_fake
def _(cos, q_probe, q_gallery, alpha, beta, out):
    return None


# ---- template_aggregate -----------------------------------------------------------
def _check_offsets(offsets: torch.Tensor, n: int) -> None:
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype != torch.int64:
        raise ValueError("offsets: expected a 1-D int64 tensor of T + 1 >= 1 entries")
    o = offsets.detach()
    if int(o[0]) != 0 or int(o[-1]) != n:
        raise ValueError(f"offsets: expected offsets[0] == 0 and offsets[-1] == N = {n}")
    if o.numel() > 1 and bool((o[1:] < o[:-1]).any()):
        raise ValueError("offsets: must be nondecreasing")


@torch.library.custom_op("qme_ext::template_aggregate", mutates_args=())
def template_aggregate(
    features: torch.Tensor,  # (N, D) float32/float64/float16/bfloat16
    weights: torch.Tensor,  # (N,) float32 or float64
    offsets: torch.Tensor,  # (T + 1,) int64 CSR offsets
    normalize: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(templates (T, D), weight_sum (T,), norm (T,)) in the weights' dtype.

    templates[t] = sum_i w_i f_i / sum_i w_i over rows offsets[t]:offsets[t+1]
    (L2-normalised when ``normalize``); norm is |mean| before normalisation.
    Zero-weight segments give zero templates.
    """
    if features.dim() != 2 or weights.shape != (features.shape[0],):
        raise ValueError(f"template_aggregate: features (N, D) and weights (N,) expected, got "
                         f"{tuple(features.shape)} and {tuple(weights.shape)}")
    if features.dtype not in DTYPE_CODES:
        raise ValueError(f"features: unsupported dtype {features.dtype}")
    if weights.dtype not in (torch.float32, torch.float64):
        raise ValueError("weights: expected float32 or float64")
    for name, t in (("weights", weights), ("offsets", offsets)):
        if t.device != features.device:  # a kernel would read another device's memory
            raise ValueError(f"{name}: must be on the device of features ({features.device}), "
                             f"got {t.device}")
    _check_offsets(offsets, features.shape[0])
    T, D = offsets.shape[0] - 1, features.shape[1]
    wd = weights.dtype
    dev = features.device
    templates = torch.empty((T, D), dtype=wd, device=dev)
    weight_sum = torch.empty((T,), dtype=wd, device=dev)
    norm = torch.empty((T,), dtype=wd, device=dev)
    if T == 0:
        return templates, weight_sum, norm
    weights = weights.contiguous()
    offsets = offsets.contiguous()
    with device_guard(features):
        mod, extra = module_and_stream(dev)
        mod.template_aggregate((matrix_descriptor(features), weights.data_ptr(),
                                wd == torch.float64, offsets.data_ptr(), T, bool(normalize),
                                templates.data_ptr(), weight_sum.data_ptr(), norm.data_ptr()),
                               *extra)
    return templates, weight_sum, norm


@template_aggregate.register_fake
def _(features, weights, offsets, normalize):
    T = offsets.shape[0] - 1
    D = features.shape[1]
    return (features.new_empty((T, D), dtype=weights.dtype),
            features.new_empty((T,), dtype=weights.dtype),
            features.new_empty((T,), dtype=weights.dtype))


def _ta_setup_context(ctx, inputs, output):
    features, weights, offsets, normalize = inputs
    templates, weight_sum, norm = output
    ctx.normalize = normalize
    ctx.save_for_backward(features, weights, offsets, templates, weight_sum, norm)


def _ta_backward(ctx, g_t, g_w, g_n):
    # u = sum w f / W;  y = u / |u|.  dy/du = (I - y y^T) / |u|.
    # d u / d f_i = w_i / W;  d u / d w_i = (f_i - u) / W;  d W / d w_i = 1.
    features, weights, offsets, templates, weight_sum, norm = ctx.saved_tensors
    T = offsets.shape[0] - 1
    counts = offsets[1:] - offsets[:-1]
    seg = torch.repeat_interleave(torch.arange(T, device=offsets.device), counts)
    wd = weights.dtype
    g_t = torch.zeros_like(templates) if g_t is None else g_t.to(wd)
    nz = norm > 0
    safe_n = torch.where(nz, norm, torch.ones_like(norm))
    if ctx.normalize:
        y = templates
        u = torch.where(nz[:, None], y * norm[:, None], y)
        proj = (y * g_t).sum(1, keepdim=True)
        g_u = torch.where(nz[:, None], (g_t - y * proj) / safe_n[:, None], g_t)
    else:
        u = templates
        g_u = g_t
    if g_n is not None:
        g_u = g_u + g_n.to(wd)[:, None] * torch.where(nz[:, None], u / safe_n[:, None],
                                                       torch.zeros_like(u))
    inv_w = torch.where(weight_sum != 0, 1.0 / torch.where(weight_sum != 0, weight_sum,
                                                           torch.ones_like(weight_sum)),
                        torch.zeros_like(weight_sum))
    g_mean = (g_u * inv_w[:, None])[seg]  # (N, D) dL/du of each row's template / W
    grad_f = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_f = (weights[:, None] * g_mean).to(features.dtype)
    if ctx.needs_input_grad[1]:
        grad_w = ((features.to(wd) - u[seg]) * g_mean).sum(1)
        if g_w is not None:
            grad_w = grad_w + g_w.to(wd)[seg]
    return grad_f, grad_w, None, None


template_aggregate.register_autograd(_ta_backward, setup_context=_ta_setup_context)
