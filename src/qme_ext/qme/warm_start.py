"""Warm start of the QME experts: a quality-gated linear fusion fitted in closed form.

The default training recipe (:data:`qme_ext.qme.train.RECIPES`, ``"robust"``) does not start
the experts from random weights. It first fits, on the training pairs only, the fusion that the
architecture can represent exactly and that a calibrated baseline cannot:

    logit(p, g) = q_p * (w_1 . y_pg + c_1) + (1 - q_p) * (w_2 . y_pg + c_2)

with ``y_pg`` the K scores z-normalised by the training statistics (what the experts'
BatchNorm computes with its running statistics) and ``q_p`` the probe's quality from the frozen
quality estimator. It is a class-balanced, L2-regularised logistic regression of genuine
against impostor pairs on the features ``[q y, q, (1 - q) y, 1 - q]``: convex, so the fit is
deterministic and needs no validation data. Expert 1 then carries the fusion of good faces,
expert 2 the fusion of bad or absent ones, and both output calibrated log-odds, so one
threshold serves probes of every quality (TAR@FAR, FNIR@FPIR).

A second candidate, :func:`fit_quality_weighted`, is the calibrated quality-weighted z-score
mean (the ``farsight_style`` baseline with the QE's quality), also exactly representable;
:func:`qme_ext.qme.train.fit_qme` validates both and starts from the better one.

:func:`set_linear_experts` writes that fusion into the experts: BatchNorm with the training
mean/variance, the first hidden unit of each expert's MLP carrying ``w . y`` in SELU's linear
range (SELU(x) = lambda x for x > 0; a positive offset ``beta`` keeps the pre-activation positive
for all but the most extreme low scores, and SELU is increasing everywhere, so even there the
order of scores is kept), the second layer undoing the scale and offset, and the other hidden
units starting at zero output weight so that training can grow them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["channel_stats", "fit_gated_logistic", "fit_quality_weighted", "set_linear_experts",
           "GatedLinearFit"]

SELU_SCALE = 1.0507009873554804934193349852946


class GatedLinearFit:
    """The fitted fusion: per-channel mean/var (K,), weights (2, K), offsets (2,)."""

    def __init__(self, mean, var, weights, offsets, loss: float):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.var = np.asarray(var, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.offsets = np.asarray(offsets, dtype=np.float64)
        self.loss = float(loss)

    def as_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(),
                "weights": self.weights.tolist(), "offsets": self.offsets.tolist(),
                "loss": self.loss}


def channel_stats(x: np.ndarray) -> tuple:
    """Per-channel mean and unbiased variance of (P, K, N) scores over P and N (float64)."""
    xs = np.moveaxis(np.asarray(x), 1, 0).reshape(x.shape[1], -1).astype(np.float64)
    return xs.mean(axis=1), xs.var(axis=1, ddof=1)


def _pairs(x: np.ndarray, genuine: np.ndarray, max_impostors: int, seed: int):
    """(probe index, column index, label) of all genuine and <= max_impostors impostor pairs."""
    gen = np.flatnonzero(genuine.reshape(-1))
    imp = np.flatnonzero(~genuine.reshape(-1))
    if gen.size == 0 or imp.size == 0:
        raise ValueError("the warm start needs genuine and impostor training pairs")
    if imp.size > max_impostors:
        rng = np.random.default_rng(seed)
        imp = np.sort(rng.choice(imp, max_impostors, replace=False))
    flat = np.concatenate([gen, imp])
    label = np.concatenate([np.ones(gen.size), np.zeros(imp.size)])
    n = x.shape[2]
    return flat // n, flat % n, label


def _training_pairs(x: np.ndarray, q: np.ndarray, genuine: np.ndarray, max_impostors: int,
                    seed: int) -> tuple:
    """(mean (K,), var (K,), y (M, K) the training-z-scored scores of the kept pairs,
    q (M,) their probe's quality clipped to [0, 1], label (M,) 1 for genuine)."""
    mean, var = channel_stats(x)
    pi, gi, label = _pairs(x, np.asarray(genuine, dtype=bool), max_impostors, seed)
    y = (x[pi, :, gi].astype(np.float64) - mean) / np.sqrt(var + 1e-5)
    qq = np.clip(np.asarray(q, dtype=np.float64).reshape(-1), 0.0, 1.0)[pi]
    return mean, var, y, qq, label


def _balance_weights(label: torch.Tensor) -> torch.Tensor:
    """Per-pair loss weights: genuine and impostor pairs weigh the same in total."""
    n_gen = float(label.sum())
    return torch.where(label > 0, 0.5 / n_gen, 0.5 / (label.numel() - n_gen))


def _minimise(loss_fn, params: torch.Tensor, max_iter: int) -> None:
    """Deterministic float64 L-BFGS (strong Wolfe line search) of ``loss_fn()`` in place."""
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def fit_gated_logistic(x: np.ndarray, q: np.ndarray, genuine: np.ndarray, *,
                       l2: float = 1e-3, max_impostors: int = 400_000, seed: int = 0,
                       max_iter: int = 200, gated: bool = True) -> GatedLinearFit:
    """Fit the gated log-odds fusion on training scores.

    Parameters
    ----------
    x : (P, K, N) raw training scores (probes vs training centres), any float dtype.
    q : (P,) probe quality in [0, 1] (ignored when ``gated`` is False).
    genuine : (P, N) bool, same subject.
    l2 : ridge penalty on the weights (not the offsets), per unit of the balanced loss.
    max_impostors : impostor pairs kept (seeded subsample; every genuine pair is kept).
    gated : False fits one weight vector for both experts (the Z = 1 / no-QE ablations).

    Returns a :class:`GatedLinearFit`; deterministic (float64 L-BFGS from zeros on CPU).
    """
    x = np.asarray(x)
    K = x.shape[1]
    mean, var, y, qq, label = _training_pairs(x, q, genuine, max_impostors, seed)
    if not gated:
        qq = np.ones_like(qq)
    yt = torch.as_tensor(y)
    qt = torch.as_tensor(qq)[:, None]
    lab = torch.as_tensor(label)
    sw = _balance_weights(lab)
    params = torch.zeros(2 * K + 2, dtype=torch.float64, requires_grad=True)

    def loss_fn():
        w1, w2 = params[:K], params[K:2 * K]
        c1, c2 = params[2 * K], params[2 * K + 1]
        logit = (qt[:, 0] * (yt @ w1 + c1) + (1 - qt[:, 0]) * (yt @ w2 + c2))
        nll = torch.nn.functional.binary_cross_entropy_with_logits(logit, lab, weight=sw,
                                                                   reduction="sum")
        return nll + l2 * (w1.square().sum() + w2.square().sum())

    _minimise(loss_fn, params, max_iter)
    p = params.detach().numpy()
    w = np.stack([p[:K], p[K:2 * K]])
    c = np.array([p[2 * K], p[2 * K + 1]])
    if not gated:
        w[1], c[1] = w[0], c[0]
    with torch.no_grad():
        final = float(loss_fn())
    return GatedLinearFit(mean, var, w, c, final)


def _linear_range(fit: GatedLinearFit, x: np.ndarray) -> float:
    """max |w . y| of either expert over the training scores (y z-normalised)."""
    y = (np.moveaxis(np.asarray(x, dtype=np.float64), 1, 2) - fit.mean) / np.sqrt(fit.var + 1e-5)
    r = np.abs(y @ fit.weights.T).max()
    return float(max(r, 1e-6))


def _balanced_logistic(features: torch.Tensor, label: torch.Tensor, l2: float,
                       max_iter: int, n_free: int = 0) -> tuple:
    """Class-balanced L2 logistic regression (float64 L-BFGS from zeros): the parameters
    (F,) and the final loss; the last `n_free` parameters (offsets) are not penalised."""
    sw = _balance_weights(label)
    F = features.shape[1]
    params = torch.zeros(F, dtype=torch.float64, requires_grad=True)

    def loss_fn():
        nll = torch.nn.functional.binary_cross_entropy_with_logits(
            features @ params, label, weight=sw, reduction="sum")
        return nll + l2 * params[:F - n_free].square().sum()

    _minimise(loss_fn, params, max_iter)
    with torch.no_grad():
        return params.detach().numpy(), float(loss_fn())


def fit_quality_weighted(x: np.ndarray, q: np.ndarray, genuine: np.ndarray, face: int, *,
                         l2: float = 1e-3, max_impostors: int = 400_000, seed: int = 0,
                         max_iter: int = 100) -> GatedLinearFit:
    """The quality-weighted z-score mean as a gated fit: the calibrated baseline the gate
    represents exactly (``farsight_style`` with the QE's quality for the face weight).

    With equal base weights 1/K, probe quality q gives the face weight q/K and the other
    K - 1 models (1 - q/K)/(K - 1) each: linear in q, so expert 1 (q = 1) is the plain
    mean and expert 2 (q = 0) the mean without the face. One scale and offset, fitted by
    the same class-balanced logistic loss as :func:`fit_gated_logistic`, turn the fused
    z-scores into log-odds. Arguments as there; ``face`` is the face model's index.
    """
    x = np.asarray(x)
    K = x.shape[1]
    if K < 2:
        raise ValueError("the quality-weighted fusion needs at least two models")
    mean, var, y, qq, label = _training_pairs(x, q, genuine, max_impostors, seed)
    W = np.full((2, K), 1.0 / K)
    W[1] = 1.0 / (K - 1)
    W[1, face] = 0.0
    s = qq * (y @ W[0]) + (1.0 - qq) * (y @ W[1])
    feats = torch.as_tensor(np.stack([s, np.ones_like(s)], axis=1))
    (alpha, beta), loss = _balanced_logistic(feats, torch.as_tensor(label), l2, max_iter, 1)
    return GatedLinearFit(mean, var, alpha * W, np.array([beta, beta]), loss)


def set_linear_experts(model, fit: GatedLinearFit, x: Optional[np.ndarray] = None,
                       headroom: float = 2.0) -> None:
    """Write ``fit`` into the experts of ``model`` (a :class:`~qme_ext.qme.modules.QME`).

    Expert z computes ``w_z . y + c_z`` exactly while ``|w_z . y| < headroom * R``, with R the
    largest value seen on the training scores ``x`` (P, K, N) (without ``x``: R = 16), and an
    increasing function of it beyond. The first hidden unit's input weights are ``w_z`` itself
    (unit scale), so Adam's steps move it by the same relative amount as the other layers.
    With Z = 1 the expert gets row 0 of ``fit``; with Z > 2 expert z gets the interpolation of
    rows 0 and 1 at its gate centre.
    """
    Z = len(model.experts)
    R = _linear_range(fit, x) if x is not None else 16.0
    beta = headroom * R
    with torch.no_grad():
        for z, e in enumerate(model.experts):
            t = 1.0 if Z == 1 else 1.0 - z / (Z - 1)       # gate centre: 1 = good quality
            w = t * fit.weights[0] + (1 - t) * fit.weights[1]
            c = t * fit.offsets[0] + (1 - t) * fit.offsets[1]
            dt = e.weight.dtype
            e.running_mean.copy_(torch.as_tensor(fit.mean, dtype=dt))
            e.running_var.copy_(torch.as_tensor(fit.var, dtype=dt))
            e.weight.fill_(1.0)
            e.bias.zero_()
            e.fc1.weight[0] = torch.as_tensor(w, dtype=dt)
            e.fc1.bias[0] = beta
            e.fc2.weight.zero_()
            e.fc2.weight[0, 0] = 1.0 / SELU_SCALE
            e.fc2.bias[0] = c - beta
