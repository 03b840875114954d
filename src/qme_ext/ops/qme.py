"""Custom ops of the fused QME expert mixture: ``qme_ext::expert_fuse`` (+ backward).

    F[b, g] = sum_z gate[b, z] * E_z(x[b, :, g])
    E_z(v)  = b2_z + W2_z . drop(selu(W1_z (a_z * v + c_z) + b1_z))

``a``/``c`` are the experts' BatchNorm layers folded into one affine map per
channel (``a = gamma / sqrt(var + eps)``, ``c = beta - mean * a``); callers compute
them with torch ops so that, in training mode, the gradient through the batch
statistics is handled by autograd. Dropout masks come from a counter-based hash of
(seed, expert, b, g, hidden unit): the backward regenerates them from ``seed``.

Dtypes: ``x`` may be float32/float64/float16/bfloat16; the kernels compute in
float64 when ``x`` is float64 and in float32 otherwise, and ``F`` has that
compute dtype. Parameters are cast to it inside the op; gradients are returned in
the dtype of each input.
"""
from __future__ import annotations

import torch

from .common import DTYPE_CODES, device_guard, module_and_extra

MAX_CHANNELS = 8  # kExpertMaxChannels in csrc/include/qme/expert_fuse.h
_U64 = (1 << 64) - 1


def compute_dtype(x_dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if x_dtype == torch.float64 else torch.float32


def cube_descriptor(x: torch.Tensor) -> tuple:
    """(address, dtype code, B, K, G, stride_b, stride_k, stride_g) of a 3-D tensor."""
    return (x.data_ptr(), DTYPE_CODES[x.dtype], x.shape[0], x.shape[1], x.shape[2],
            x.stride(0), x.stride(1), x.stride(2))


def _check(x, a, c, w1, b1, w2, b2, gate, dropout, grad=None):
    # every parameter is read by raw pointer at its documented shape: a wrong shape
    # would be an out-of-bounds read, so each is checked (grad too, in backward)
    if x.dim() != 3:
        raise ValueError(f"x: expected (B, K, G), got shape {tuple(x.shape)}")
    if x.dtype not in DTYPE_CODES:
        raise ValueError(f"x: unsupported dtype {x.dtype}")
    B, K, _ = x.shape
    if not 1 <= K <= MAX_CHANNELS:
        raise ValueError(f"x: expected 1..{MAX_CHANNELS} model channels, got {K}")
    if w1.dim() != 3 or w1.shape[2] != K:
        raise ValueError(f"w1: expected (Z, H, {K}) for K={K} model channels, got "
                         f"{tuple(w1.shape)}")
    Z, H = w1.shape[0], w1.shape[1]
    expected = {"a": (a, (Z, K)), "c": (c, (Z, K)), "b1": (b1, (Z, H)), "w2": (w2, (Z, H)),
                "b2": (b2, (Z,)), "gate": (gate, (B, Z))}
    if grad is not None:
        expected["grad"] = (grad, (B, x.shape[2]))
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} (Z={Z} experts, H={H} hidden, "
                             f"K={K} models, B={B}), got {tuple(t.shape)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected 0 <= p < 1, got {dropout}")


def _prepared(x, params):
    ct = compute_dtype(x.dtype)
    return [t.detach().to(device=x.device, dtype=ct).contiguous() for t in params]


@torch.library.custom_op("qme_ext::expert_fuse", mutates_args=())
def expert_fuse(
    x: torch.Tensor,  # (B, K, G) raw scores, any strides
    a: torch.Tensor,  # (Z, K) folded BatchNorm scale
    c: torch.Tensor,  # (Z, K) folded BatchNorm shift
    w1: torch.Tensor,  # (Z, H, K)
    b1: torch.Tensor,  # (Z, H)
    w2: torch.Tensor,  # (Z, H)
    b2: torch.Tensor,  # (Z,)
    gate: torch.Tensor,  # (B, Z)
    dropout: float,
    seed: int,
) -> torch.Tensor:
    """Fused (B, G) scores of all Z experts in one pass over x."""
    _check(x, a, c, w1, b1, w2, b2, gate, dropout)
    B, K, G = x.shape
    Z, H = w1.shape[0], w1.shape[1]
    ct = compute_dtype(x.dtype)
    out = torch.empty((B, G), dtype=ct, device=x.device)
    if B * G == 0:
        return out
    ps = _prepared(x, (a, c, w1, b1, w2, b2, gate))
    desc = cube_descriptor(x)
    with device_guard(x):
        mod, extra, _ws = module_and_extra(x.device,
                                           lambda m: m.expert_fuse_workspace(desc, Z, H))
        mod.expert_fuse((desc, tuple(t.data_ptr() for t in ps), Z, H, float(dropout),
                         int(seed) & _U64, out.data_ptr()), *extra)
    return out


@expert_fuse.register_fake
def _(x, a, c, w1, b1, w2, b2, gate, dropout, seed):
    return x.new_empty((x.shape[0], x.shape[2]), dtype=compute_dtype(x.dtype))


@torch.library.custom_op("qme_ext::expert_fuse_bwd", mutates_args=())
def expert_fuse_bwd(
    grad: torch.Tensor,  # (B, G) gradient of the fused scores
    x: torch.Tensor,  # (B, K, G)
    a: torch.Tensor,  # (Z, K)
    c: torch.Tensor,  # (Z, K)
    w1: torch.Tensor,  # (Z, H, K)
    b1: torch.Tensor,  # (Z, H)
    w2: torch.Tensor,  # (Z, H)
    b2: torch.Tensor,  # (Z,)
    gate: torch.Tensor,  # (B, Z)
    dropout: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """(grad_x, grad_a, grad_c, grad_w1, grad_b1, grad_w2, grad_b2, grad_gate), compute dtype.

    Hidden activations and dropout masks are recomputed, not stored; parameter
    gradients are reduced in a fixed order (bitwise reproducible). On CUDA each block
    keeps the parameters and 8 per-warp copies of their gradient partials in shared
    memory, about 9 Z (2K + HK + 2H + 1) values of the compute dtype: the QME sizes (K <= 8,
    ratio 3, a few experts) fit easily, but e.g. float64 with Z = 8, H = 64, K = 8 exceeds
    an H100's 227 KiB and is refused (ValueError) where the CPU twin runs.
    """
    _check(x, a, c, w1, b1, w2, b2, gate, dropout, grad)
    B, K, G = x.shape
    Z, H = w1.shape[0], w1.shape[1]
    ct = compute_dtype(x.dtype)
    dev = x.device
    outs = [torch.empty((B, K, G), dtype=ct, device=dev),
            torch.empty((Z, K), dtype=ct, device=dev), torch.empty((Z, K), dtype=ct, device=dev),
            torch.empty((Z, H, K), dtype=ct, device=dev),
            torch.empty((Z, H), dtype=ct, device=dev), torch.empty((Z, H), dtype=ct, device=dev),
            torch.empty((Z,), dtype=ct, device=dev), torch.empty((B, Z), dtype=ct, device=dev)]
    if B * G == 0:
        for t in outs:
            t.zero_()
        return tuple(outs)
    ps = _prepared(x, (a, c, w1, b1, w2, b2, gate))
    g = grad.detach().to(device=dev, dtype=ct).contiguous()
    desc = cube_descriptor(x)
    with device_guard(x):
        mod, extra, _ws = module_and_extra(dev, lambda m: m.expert_fuse_bwd_workspace(desc, Z, H))
        mod.expert_fuse_bwd((desc, tuple(t.data_ptr() for t in ps), Z, H, float(dropout),
                             int(seed) & _U64, g.data_ptr(), tuple(t.data_ptr() for t in outs)),
                            *extra)
    return tuple(outs)


@expert_fuse_bwd.register_fake
def _(grad, x, a, c, w1, b1, w2, b2, gate, dropout, seed):
    B, K, G = x.shape
    Z, H = w1.shape[0], w1.shape[1]
    ct = compute_dtype(x.dtype)
    return (x.new_empty((B, K, G), dtype=ct), x.new_empty((Z, K), dtype=ct),
            x.new_empty((Z, K), dtype=ct), x.new_empty((Z, H, K), dtype=ct),
            x.new_empty((Z, H), dtype=ct), x.new_empty((Z, H), dtype=ct),
            x.new_empty((Z,), dtype=ct), x.new_empty((B, Z), dtype=ct))


def _setup_context(ctx, inputs, output):
    x, a, c, w1, b1, w2, b2, gate, dropout, seed = inputs
    ctx.save_for_backward(x, a, c, w1, b1, w2, b2, gate)
    ctx.dropout = dropout
    ctx.seed = seed


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    grads = expert_fuse_bwd(grad, *saved, ctx.dropout, ctx.seed)
    # Each gradient in the dtype of its input (x may be half precision).
    grads = [gr.to(t.dtype) for gr, t in zip(grads, saved)]
    return (*grads, None, None)


expert_fuse.register_autograd(_backward, setup_context=_setup_context)
