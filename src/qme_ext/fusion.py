"""Score normalisation and baseline score-level fusion (docs/definitions.rst, §3), on CPU or CUDA via torch.

Normalisers (``fit(calibration)`` then ``transform(matrix)``; statistics in float64):

- ``zscore``: (s - mu) / (sigma + 1e-10), mu and sigma over all entries, ddof 0.
- ``minmax``: (s - min) / (max - min + 1e-10).
- ``tanh``: 0.5 * (tanh(0.01 * (s - mu_G) / sigma_G) + 1), genuine-pair statistics (ddof 0).
- ``rhe``: (s - min) / (mu_G + sigma_G - min + 1e-10), min over all entries, genuine mu_G,
  sigma_G (ddof 0).

A calibration is a ``(score_mat (P, G), q_pids (P,), g_pids (G,))`` triple (labels may be None for
zscore/minmax), or the string ``"self"``: fit on the very matrix being transformed (then
``transform`` needs the labels for tanh/rhe), which is what the QME paper's baseline rows did.

:func:`fuse` calibrations (docs/definitions.rst, §3):

- ``"self"``: the QME paper's notebook protocol. zscore and minmax normalise each matrix with its
  **own** statistics: ``score_mat`` with the score matrix's, ``merge_score_mat`` with the merge
  matrix's mean/std or min/max. RHE and tanh use the score matrix's min and genuine statistics
  for both matrices (a merge matrix has no probe-vs-entry genuine pairs of its own).
- ``"self-score"``: the statistics of the test set's score matrices for both matrices (the rule
  a separate calibration file follows; qme_ext's ``self`` before the paper rule was adopted).
- a ScoreSet: its score matrices' statistics for both matrices.

Rules combine the K normalised matrices (models in ScoreSet order):

- ``mean``, ``min``, ``max``: element-wise.
- ``weighted``: sum_k w_k s_k with w_k proportional to 1 / EER_k on the calibration set, or given
  ``weights``.
- ``asym_ao``: Asymmetric aggregation operator (Herbadji et al. 2020) with the Hamacher
  generator: As(a, b) = a^m b / (a^(m-1) b + 1 - b), m = 2 by default; As = 0 when a or b is 0;
  inputs clipped to [0, 1] (the default ``minmax`` normaliser maps calibration scores there),
  output clipped to [0, 1]; left fold ((s_1 As s_2) As s_3) ... .
- ``bssf``: weighted sum with w_i = u_i / sum_j u_j, u in [0, 1]^K minimising the calibration EER
  by a deterministic seeded search (random candidates from ``numpy.random.default_rng(seed)``
  plus the equal and one-hot vectors, then coordinate refinement with halving steps).
- ``farsight_style``: quality-weighted sum. Base weights w (equal by default); for probe p the
  face model's weight becomes w_face * q_p, with q_p in [0, 1] from ``quality/{face}_weights``,
  and the other models share the remaining 1 - w_face * q_p in proportion to their base weights.
  APPROXIMATION: the FarSight paper's exact quality-fusion rule was not available; this is a
  plausible rule with the described behaviour (trust the face less when its quality is low).
- ``llr``: linear logistic-regression fusion (the LogisticRegression of bob.fusion.base;
  Brümmer's FoCal / BOSARIS linear fusion): fused = b + sum_k w_k s_k over the normalised
  scores (zscore by default; the fit is affine-invariant, the normaliser only conditions
  it), (w, b) maximising the prior-weighted log-likelihood of the calibration pairs (all
  genuine, at most ``MAX_CALIBRATION_IMPOSTORS`` impostor pairs), genuine and impostor
  pairs each weighted to total 1/2, with a 1e-6 L2 penalty on w (finite weights on
  separable data); Newton iterations in float64 to convergence. With the prior of 1/2
  the fused score is a natural-log likelihood ratio, so ``verification(...).cllr`` of it
  is meaningful. CHOICE: bob.fusion.base fits scikit-learn's unweighted
  ``LogisticRegression`` (its output is the log posterior odds at the training prior,
  i.e. the LLR plus ln(N_gen / N_imp) up to the fit); the balanced weighting here is
  ``class_weight="balanced"`` in scikit-learn's terms.

Method strings for :func:`fuse`: a normaliser name (normalise each model, then ``mean``: the
paper's "Z-score", "Min-max", "RHE" rows), a rule name (with its default normaliser:
``mean``/``min``/``max`` use raw scores as in the QME reference, ``weighted`` zscore,
``asym_ao`` minmax, ``bssf`` zscore, ``farsight_style`` zscore), or ``"norm:rule"`` such as
``"zscore:max"`` (``raw`` as the normaliser means none). Names are case-insensitive and ignore
``-``/``_``, so ``"Z-score"`` and ``"Min-max"`` work.

Choices
-------
- NaN scores are replaced like the QME reference's ``np.nan_to_num`` (NaN -> 0, +-inf -> the
  largest finite float32 of that sign) before any statistic and before transforming.
- A model with no finite score (in the calibration set, or among the fused matrices of
  :func:`fuse`), statistics that are not finite (or a zero scale), and weights that are not
  finite are a ValueError naming the model: the NaN rule alone would decide every fused
  score (a z-score row equal to another model's, an Asym-AO row all tied).
- Merge matrices (probe vs subject templates) are transformed with the statistics fitted on the
  score matrices of the same model (``"self-score"`` or a calibration ScoreSet): templates are
  scored in the same domain, and a calibration split need not have merge matrices. Only
  ``"self"`` (the paper's rule) fits zscore/minmax on each merge matrix itself.
- The EER used to fit ``weighted`` and ``bssf`` is computed by a small internal helper on
  pre-split genuine/impostor vectors, with impostors subsampled (seeded) to at most
  ``MAX_CALIBRATION_IMPOSTORS`` so the search stays fast; reported EERs come from
  :mod:`qme_ext.metrics`. The EER convention is bob's (threshold at min |FAR - FRR|,
  EER = (FAR + FRR) / 2) evaluated at every distinct calibration score.
- Applying a fusion is one ``qme_ext::fuse_scores`` call on ``device`` (CPU or CUDA): the K
  matrices are read in place (any float dtype and strides), normalised and folded in float64
  per entry, and only the float32 result is written; no normalised copy is stored. Its eager
  definition, :func:`qme_ext.reference.fusion.fuse_scores_ref`, is the test oracle. Fitting
  reads each calibration matrix in place once (``qme_ext::score_stats``: count, mean, M2, min
  and max of all and of genuine entries, ids compared on the fly).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .ops.fusion import (NORM_AFFINE, NORM_TANH, RULE_ASYM_AO, RULE_MAX, RULE_MIN, RULE_SUM,
                         fuse_scores, score_stats)
from .ops.inputs import check_seed, check_target_device, require_finite_score
from .io import ScoreSet

__all__ = [
    "Normaliser", "ZScore", "MinMax", "Tanh", "RHE", "NORMALISERS", "get_normaliser",
    "RULES", "DEFAULT_NORMALISER", "parse_method", "asym_ao", "fuse", "FusionResult",
    "fit_fusion", "apply_fusion", "SELF_CALIBRATIONS", "calibrated_models", "fusion_to_dict",
    "fusion_from_dict",
]

EPS = 1e-10
# fuse(calibration=...) strings: the paper's notebook protocol, and score-matrix statistics
SELF_CALIBRATIONS = ("self", "self-score")
MAX_CALIBRATION_IMPOSTORS = 200_000


def _canon(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _tensor(matrix) -> torch.Tensor:
    """torch.as_tensor, copying numpy views with negative strides (torch cannot view them)."""
    if isinstance(matrix, np.ndarray) and any(st < 0 for st in matrix.strides):
        matrix = np.ascontiguousarray(matrix)
    return torch.as_tensor(matrix)


def _float_matrix(matrix, device) -> torch.Tensor:
    """A 2-D float tensor on ``device`` for the fused kernel (a view where possible)."""
    t = _tensor(matrix)
    if device is not None:
        t = t.to(device)
    if not t.is_floating_point() or t.dtype not in (torch.float16, torch.bfloat16,
                                                     torch.float32, torch.float64):
        t = t.to(torch.float64)
    return t if t.dim() == 2 else t.reshape(1, -1)


def _ids_on(ids, device) -> torch.Tensor:
    """(n,) int64 ids on `device`, from numpy, a list or a tensor on any device."""
    if isinstance(ids, torch.Tensor):
        return ids.detach().to(device=device, dtype=torch.int64)
    return torch.as_tensor(np.asarray(ids, dtype=np.int64), device=device)


def _genuine_mask(q_pids, g_pids, device) -> torch.Tensor:
    return _ids_on(q_pids, device)[:, None] == _ids_on(g_pids, device)[None, :]


# ------------------------------------------------------------------------------------------
# normalisers
# ------------------------------------------------------------------------------------------
class Normaliser:
    """Base class: ``fit(calibration)`` stores float64 statistics, ``transform`` applies them.

    ``transform(matrix)`` returns the same kind it receives: a float64 numpy array for numpy
    input, a float64 tensor (on the input's device) for tensor input.
    """

    name = ""
    needs_labels = False

    def __init__(self, device: Union[str, torch.device, None] = None):
        self.device = torch.device(device) if device is not None else None
        self.fitted = False
        self.self_calibrated = False

    def _stats(self, stats: "_Stats") -> None:
        raise NotImplementedError

    def _params(self) -> tuple:
        """(norm code, shift, div) of qme_ext::fuse_scores for the fitted statistics."""
        raise NotImplementedError

    def fuse_params(self, matrix=None, q_pids=None, g_pids=None) -> tuple:
        """The fitted (norm code, shift, div); a self-calibrated normaliser fits on
        ``matrix`` (and the ids) first."""
        if self.self_calibrated:
            self.fit((matrix, q_pids, g_pids))
            self.self_calibrated = True
        elif not self.fitted:
            raise RuntimeError(f"normaliser {self.name!r} used before fit()")
        return self._params()

    def fit(self, calibration, q_pids=None, g_pids=None) -> "Normaliser":
        """Fit on ``(score_mat, q_pids, g_pids)``, on a bare matrix (label-free normalisers), or
        ``"self"`` (fit on each matrix passed to :meth:`transform`)."""
        if isinstance(calibration, str):
            if calibration != "self":
                raise ValueError(f"calibration must be a (scores, q_pids, g_pids) triple or "
                                 f"'self', got {calibration!r}")
            self.self_calibrated = True
            return self
        if isinstance(calibration, tuple):
            calibration, q_pids, g_pids = calibration
        s = _float_matrix(calibration, self.device)  # read in place by the one-pass kernel
        # statistics of a matrix without a finite entry are those of the NaN rule's zeros:
        # every fused score would be decided by it (issue 23), so it is refused
        require_finite_score(s, f"{self.name} calibration scores")
        q = g = torch.empty(0, dtype=torch.int64, device=s.device)
        if self.needs_labels:
            if q_pids is None or g_pids is None:
                raise ValueError(f"normaliser {self.name!r} needs q_pids and g_pids "
                                 f"(genuine-pair statistics)")
            q, g = _ids_on(q_pids, s.device), _ids_on(g_pids, s.device)
            if (q.numel(), g.numel()) != tuple(s.shape):
                raise ValueError(f"labels give shape {(q.numel(), g.numel())} but scores have "
                                 f"shape {tuple(s.shape)}")
        stats = _Stats(*score_stats(s, q, g).cpu().tolist())
        if self.needs_labels and stats.genuine[0] == 0:
            raise ValueError(f"normaliser {self.name!r}: calibration has no genuine pair")
        self._stats(stats)
        _, shift, div = self._params()
        if not (math.isfinite(shift) and math.isfinite(div) and div != 0.0):
            raise ValueError(f"normaliser {self.name!r}: calibration statistics are not finite "
                             f"(shift {shift}, scale {div}; scores too large for float64 sums?)")
        self.fitted = True
        self.self_calibrated = False
        return self

    def transform(self, matrix, q_pids=None, g_pids=None):
        """Normalise ``matrix`` (any shape) with the fitted statistics (float64 result)."""
        is_numpy = not isinstance(matrix, torch.Tensor)
        s = _float_matrix(matrix, self.device if is_numpy else matrix.device)
        code, shift, div = self.fuse_params(s, q_pids, g_pids)
        one = torch.ones(1, dtype=torch.float64)
        out = fuse_scores([s], [code], [shift], [div], RULE_SUM, one, 0.0, torch.float64)
        out = out.reshape(np.shape(matrix))
        return out.cpu().numpy() if is_numpy else out

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if k not in ("device",)}
        return f"{type(self).__name__}({params})"


@dataclasses.dataclass
class _Stats:
    """qme_ext::score_stats rows: (count, mean, M2, min, max) of all and of genuine entries."""

    all: list
    genuine: list

    @staticmethod
    def mean_std(row) -> tuple:
        """(mean, population std) of a (count, mean, M2, ...) row."""
        return row[1], math.sqrt(row[2] / row[0])


class ZScore(Normaliser):
    """(s - mu) / (sigma + 1e-10) over all calibration entries (ddof 0)."""

    name = "zscore"

    def _stats(self, stats):
        self.mu, self.sigma = _Stats.mean_std(stats.all)

    def _params(self):
        return NORM_AFFINE, self.mu, self.sigma + EPS


class MinMax(Normaliser):
    """(s - min) / (max - min + 1e-10); calibration scores land in [0, 1)."""

    name = "minmax"

    def _stats(self, stats):
        self.lo, self.hi = stats.all[3], stats.all[4]

    def _params(self):
        return NORM_AFFINE, self.lo, self.hi - self.lo + EPS


class Tanh(Normaliser):
    """Tanh estimator, 0.5 (tanh(0.01 (s - mu_G) / sigma_G) + 1), genuine statistics."""

    name = "tanh"
    needs_labels = True

    def _stats(self, stats):
        self.mu_g, self.sigma_g = _Stats.mean_std(stats.genuine)
        if self.sigma_g == 0.0:
            raise ValueError("normaliser 'tanh': genuine calibration scores are constant "
                             "(sigma_G = 0)")

    def _params(self):
        return NORM_TANH, self.mu_g, self.sigma_g


class RHE(Normaliser):
    """Reduction of high-scores effect: (s - min) / (mu_G + sigma_G - min + 1e-10)."""

    name = "rhe"
    needs_labels = True

    def _stats(self, stats):
        self.lo = stats.all[3]
        self.mu_g, self.sigma_g = _Stats.mean_std(stats.genuine)

    def _params(self):
        return NORM_AFFINE, self.lo, self.mu_g + self.sigma_g - self.lo + EPS


class _Raw(Normaliser):
    """Identity (still applies the NaN replacement)."""

    name = "raw"

    def _stats(self, stats):
        pass

    def _params(self):
        return NORM_AFFINE, 0.0, 1.0


NORMALISERS = {cls.name: cls for cls in (ZScore, MinMax, Tanh, RHE, _Raw)}


def get_normaliser(name: str, device=None) -> Normaliser:
    """A fresh normaliser by (case/dash-insensitive) name: zscore, minmax, tanh, rhe, raw."""
    key = _canon(name)
    if key == "none":
        key = "raw"
    if key not in NORMALISERS:
        raise ValueError(f"unknown normaliser {name!r}; choose from {sorted(NORMALISERS)}")
    return NORMALISERS[key](device=device)


# ------------------------------------------------------------------------------------------
# rules
# ------------------------------------------------------------------------------------------
def asym_ao(a: torch.Tensor, b: torch.Tensor, m: float = 2.0) -> torch.Tensor:
    """Asymmetric Hamacher aggregation As(a, b) = a^m b / (a^(m-1) b + 1 - b), in [0, 1].

    Inputs are clipped to [0, 1]; the result is 0 where a or b is 0 (the operator's limit, and
    it avoids 0^(negative) for m < 1) and is clipped to [0, 1]. m = 0 gives the Hamacher product
    ab / (a + b - ab), m = 1 the product ab; As(1, b) = b and, for m = 2, As(a, 1) = a.
    Eager tensors (also the reference oracle's fold); the ``asym_ao`` rule of
    :func:`fuse` runs the same fold inside the fused kernel.
    """
    a = a.clamp(0.0, 1.0)
    b = b.clamp(0.0, 1.0)
    zero = (a == 0) | (b == 0)
    a.masked_fill_(zero, 1.0)
    b.masked_fill_(zero, 0.5)
    num = a.pow(m).mul_(b)
    den = a.pow(m - 1.0).mul_(b).add_(1.0).sub_(b)
    return num.div_(den).masked_fill_(zero, 0.0).clamp_(0.0, 1.0)


RULES = ("mean", "min", "max", "weighted", "asym_ao", "bssf", "farsight_style")
# rules with a fitted affine model and an offset (not a weighted sum of convex weights)
TRAINED_RULES = ("llr",)
DEFAULT_NORMALISER = {"mean": "raw", "min": "raw", "max": "raw", "weighted": "zscore",
                      "asym_ao": "minmax", "bssf": "zscore", "farsight_style": "zscore",
                      "llr": "zscore"}
_RULE_BY_CANON = {_canon(r): r for r in RULES + TRAINED_RULES}


def parse_method(method: str) -> tuple:
    """``method`` string -> ``(normaliser name, rule name)``; ValueError on unknown names."""
    if not isinstance(method, str) or not method.strip():
        raise ValueError(f"fusion method must be a non-empty string, got {method!r}")
    if ":" in method:
        norm, _, rule = method.partition(":")
        get_normaliser(norm)  # validates
        if _canon(rule) not in _RULE_BY_CANON:
            raise ValueError(f"unknown fusion rule {rule!r} in {method!r}; rules: "
                             f"{list(RULES + TRAINED_RULES)}")
        key = _canon(norm)
        return ("raw" if key == "none" else key), _RULE_BY_CANON[_canon(rule)]
    key = _canon(method)
    if key in NORMALISERS and key != "raw":
        return key, "mean"
    if key in _RULE_BY_CANON:
        rule = _RULE_BY_CANON[key]
        return DEFAULT_NORMALISER[rule], rule
    raise ValueError(f"unknown fusion method {method!r}; use a normaliser "
                     f"{sorted(k for k in NORMALISERS if k != 'raw')}, a rule "
                     f"{list(RULES + TRAINED_RULES)} or 'norm:rule'")


def _split_eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """bob-style EER of pre-split float64 score vectors, thresholds at every distinct score."""
    gen = np.sort(genuine)
    imp = np.sort(impostor)
    t = np.unique(np.concatenate([gen, imp]))
    n_far = imp.size - np.searchsorted(imp, t, side="left")  # #{imp >= t}
    n_frr = np.searchsorted(gen, t, side="left")  # #{gen < t}
    # |FAR - FRR| * N_imp * N_gen in integers: float rounding must not decide a tie
    # (the first, lowest threshold wins, as in metrics.eer)
    i = int(np.argmin(np.abs(n_far * gen.size - n_frr * imp.size)))
    return float((n_far[i] / imp.size + n_frr[i] / gen.size) / 2.0)


def _calibration_pairs(q_pids, g_pids, seed: int) -> tuple:
    """Flat indices of all genuine pairs and of <= MAX_CALIBRATION_IMPOSTORS impostor pairs."""
    genuine = _genuine_mask(q_pids, g_pids, "cpu").reshape(-1).numpy()
    gen_idx = np.flatnonzero(genuine)
    imp_idx = np.flatnonzero(~genuine)
    if gen_idx.size == 0 or imp_idx.size == 0:
        raise ValueError("calibration needs both genuine and impostor pairs to fit weights")
    if imp_idx.size > MAX_CALIBRATION_IMPOSTORS:
        rng = np.random.default_rng(seed)
        imp_idx = np.sort(rng.choice(imp_idx, MAX_CALIBRATION_IMPOSTORS, replace=False))
    return gen_idx, imp_idx


def _weighted_eer(u: np.ndarray, gen: np.ndarray, imp: np.ndarray) -> float:
    w = u / u.sum()
    return _split_eer(w @ gen, w @ imp)


def _bssf_search(gen: np.ndarray, imp: np.ndarray, seed: int, num_candidates: int = 64,
                 min_step: float = 1.0 / 64) -> np.ndarray:
    """u in [0, 1]^K minimising the EER of the weighted sum; (K, N) genuine/impostor inputs.

    Deterministic: candidates are the equal vector, the K one-hot vectors and
    ``num_candidates`` uniform draws from ``default_rng(seed)``; the best is refined one
    coordinate at a time with steps 1/4, 1/8, ... down to ``min_step``, a move being kept only
    when it lowers the EER strictly (so ties keep the earlier, simpler candidate).
    """
    k = gen.shape[0]
    rng = np.random.default_rng(seed)
    candidates = [np.ones(k)] + list(np.eye(k)) + list(rng.uniform(0.0, 1.0, (num_candidates, k)))
    best_u, best = None, np.inf
    for u in candidates:
        if u.sum() <= 0:
            continue
        e = _weighted_eer(u, gen, imp)
        if e < best:
            best_u, best = u.copy(), e
    step = 0.25
    while step >= min_step:
        improved = True
        while improved:
            improved = False
            for i in range(k):
                for delta in (step, -step):
                    u = best_u.copy()
                    u[i] = min(1.0, max(0.0, u[i] + delta))
                    if u.sum() <= 0 or u[i] == best_u[i]:
                        continue
                    e = _weighted_eer(u, gen, imp)
                    if e < best:
                        best_u, best, improved = u, e, True
        step /= 2.0
    return best_u


@dataclasses.dataclass
class FusionResult:
    """What :func:`fuse` fitted: per-model normalisers and the rule's weights (if any)."""

    method: str
    normaliser: str
    rule: str
    normalisers: dict
    weights: Optional[np.ndarray] = None  # (K,) base weights of weighted-sum rules
    # normalisers of the merge matrices where they differ from ``normalisers`` (calibration
    # "self": zscore/minmax fitted on each merge matrix itself); None: the same ones
    merge_normalisers: Optional[dict] = None
    offset: float = 0.0  # added to the weighted sum (``llr``: the logistic intercept)

    @property
    def models(self) -> list:
        return list(self.normalisers)

    def fuse_block(self, block: ScoreSet, q=None, *, m: float = 2.0,
                   face: Optional[str] = None, device="cpu") -> tuple:
        """The :class:`qme_ext.qme.predictor.Fuser` protocol: (fused score rows (b, G),
        fused merge rows (b, S) or None) float32 of a block of probe rows (``q`` unused: a
        baseline reads its quality from ``block.quality``)."""
        f = apply_fusion(self, block, "_fused", device=device, m=m, face=face)
        return f.score_mats["_fused"], f.merge_score_mats.get("_fused")


def fusion_to_dict(result: FusionResult) -> dict:
    """Plain numbers of a fitted :class:`FusionResult` (a checkpoint's ``extra``)."""
    def norm(n):
        return {"name": n.name, **{k: v for k, v in vars(n).items() if k != "device"}}
    return {"method": result.method, "normaliser": result.normaliser, "rule": result.rule,
            "normalisers": {k: norm(v) for k, v in result.normalisers.items()},
            "merge_normalisers": None if result.merge_normalisers is None else
            {k: norm(v) for k, v in result.merge_normalisers.items()},
            "weights": None if result.weights is None else
            [float(w) for w in np.asarray(result.weights).reshape(-1)],
            "offset": float(result.offset)}


def fusion_from_dict(d: dict) -> FusionResult:
    """The :class:`FusionResult` of :func:`fusion_to_dict`."""
    def norm(v):
        n = get_normaliser(v["name"])
        for k, x in v.items():
            if k != "name":
                setattr(n, k, x)
        return n
    merge = d.get("merge_normalisers")
    return FusionResult(d["method"], d["normaliser"], d["rule"],
                        {k: norm(v) for k, v in d["normalisers"].items()},
                        None if d.get("weights") is None else np.asarray(d["weights"], np.float64),
                        None if merge is None else {k: norm(v) for k, v in merge.items()},
                        float(d.get("offset", 0.0)))


def _fit_weights(rule, normalisers, calib: ScoreSet, models, weights, seed, device):
    """(K,) weights of a weighted-sum rule, or None for the element-wise rules."""
    k = len(models)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (k,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} finite non-negative numbers with a positive sum, "
                             f"got {weights!r}")
        return w / w.sum()
    if rule in ("mean", "farsight_style"):
        return np.full(k, 1.0 / k)
    if rule not in ("weighted", "bssf"):
        return None
    gen, imp = _calibration_inputs(normalisers, calib, models, seed, device)
    if rule == "weighted":
        eers = np.array([_split_eer(gen[i], imp[i]) for i in range(k)])
        # a perfect matcher (EER 0) would get an infinite weight: floor the EER
        inv = 1.0 / np.maximum(eers, 1e-6)
        return inv / inv.sum()
    u = _bssf_search(gen, imp, seed)
    return u / u.sum()


def _calibration_inputs(normalisers, calib: ScoreSet, models, seed, device) -> tuple:
    """(genuine (K, Ng), impostor (K, Ni)) float64 normalised calibration scores of the
    pairs of :func:`_calibration_pairs`."""
    gen_idx, imp_idx = _calibration_pairs(calib.q_pids, calib.g_pids, seed)
    k = len(models)
    gen = np.empty((k, gen_idx.size))
    imp = np.empty((k, imp_idx.size))
    for i, m in enumerate(models):
        # a tensor in, so the normalised scores stay a tensor on `device`
        s = normalisers[m].transform(_float_matrix(calib.score_mats[m], device)).reshape(-1)
        gen[i] = s[torch.as_tensor(gen_idx, device=s.device)].cpu().numpy()
        imp[i] = s[torch.as_tensor(imp_idx, device=s.device)].cpu().numpy()
    return gen, imp


def fit_llr(gen: np.ndarray, imp: np.ndarray, l2: float = 1e-6,
            max_iter: int = 100) -> tuple[np.ndarray, float]:
    """((K,) weights, offset) of the prior-weighted (1/2 each class) linear logistic
    regression of genuine (K, Ng) against impostor (K, Ni) scores (module docstring),
    by Newton's method on the convex objective."""
    k = gen.shape[0]
    x = np.concatenate([gen, imp], axis=1).T  # (N, K)
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)  # intercept column
    y = np.concatenate([np.ones(gen.shape[1]), np.zeros(imp.shape[1])])
    c = np.concatenate([np.full(gen.shape[1], 0.5 / gen.shape[1]),
                        np.full(imp.shape[1], 0.5 / imp.shape[1])])
    reg = np.full(k + 1, l2)
    reg[-1] = 0.0  # the offset is not penalised
    theta = np.zeros(k + 1)
    for _ in range(max_iter):
        z = x @ theta
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic sigmoid, overflow-free
        grad = x.T @ (c * (p - y)) + reg * theta
        hess = (x * (c * p * (1.0 - p))[:, None]).T @ x + np.diag(reg + 1e-12)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-12 * max(1.0, np.max(np.abs(theta))):
            break
    return theta[:k], float(theta[k])


def _face_quality(scoreset: ScoreSet, models, face: Optional[str]) -> tuple:
    """(index of the face model, quality (P, 1) float64 in [0, 1]) for farsight_style."""
    if face is None:
        found = [m for m in models if f"{m}_weights" in scoreset.quality]
        if len(found) != 1:
            raise ValueError(f"farsight_style needs exactly one model with quality "
                             f"'quality/<model>_weights'; found {found} among {models} "
                             f"(pass face=...)")
        face = found[0]
    if face not in models:
        raise ValueError(f"face model {face!r} not among {models}")
    key = f"{face}_weights"
    if key not in scoreset.quality:
        raise ValueError(f"farsight_style: missing key 'quality/{key}'")
    q = np.nan_to_num(np.asarray(scoreset.quality[key], dtype=np.float64)).reshape(-1, 1)
    return models.index(face), np.clip(q, 0.0, 1.0)


def _per_probe_weights(base: np.ndarray, face_index: int, q: np.ndarray) -> np.ndarray:
    """(P, K) weights: face weight base_f * q, the rest share 1 - base_f * q pro rata."""
    k = base.size
    w = np.repeat(base[None, :], q.shape[0], axis=0)
    w[:, face_index] = base[face_index] * q[:, 0]
    others = [i for i in range(k) if i != face_index]
    rest = base[others].sum()
    if rest > 0:
        w[:, others] = base[others][None, :] / rest * (1.0 - w[:, [face_index]])
    else:  # only the face model carries weight: nothing to renormalise onto
        w[:, face_index] = 1.0
    return w


_RULE_CODE = {"min": RULE_MIN, "max": RULE_MAX, "asym_ao": RULE_ASYM_AO}  # others: sum


def _fuse_matrices(result: "FusionResult", normalisers: dict, mats: dict, scoreset: ScoreSet,
                   weights, m: float, device) -> torch.Tensor:
    """(P, N) float32: the models' matrices of ``mats`` normalised by ``normalisers`` and
    folded by one qme_ext::fuse_scores call (each input read once; weights (K,) or per
    probe (P, K))."""
    models = list(result.normalisers)
    tensors = [_float_matrix(mats[mm], device) for mm in models]
    params = [normalisers[mm].fuse_params(t, scoreset.q_pids, scoreset.g_pids)
              for mm, t in zip(models, tensors)]
    rule = _RULE_CODE.get(result.rule, RULE_SUM)
    w = torch.as_tensor(np.asarray(weights if rule == RULE_SUM else np.ones(len(models)),
                                   dtype=np.float64))
    # an offset is added in float64 before the one rounding to float32
    out = fuse_scores(tensors, [p[0] for p in params], [p[1] for p in params],
                      [p[2] for p in params], rule, w, float(m),
                      torch.float64 if result.offset else torch.float32)
    return out.add_(result.offset).to(torch.float32) if result.offset else out


def fuse(scoreset: ScoreSet, method: str, calibration: Union[str, ScoreSet] = "self",
         name: Optional[str] = None, *, device: Union[str, torch.device] = "cpu",
         weights: Optional[Sequence[float]] = None, m: float = 2.0, seed: int = 0,
         face: Optional[str] = None, return_result: bool = False):
    """Fuse all models of ``scoreset`` with ``method``; return a copy with the fused model added.

    Parameters
    ----------
    scoreset : ScoreSet
        Test scores; every model is fused (use ``subset_models`` first to choose).
    method : str
        Normaliser name, rule name or ``"norm:rule"`` (see the module docstring).
    calibration : "self", "self-score" or ScoreSet
        Where normalisers and weights are fitted: the test set itself following the QME
        paper's notebook protocol (``"self"``: zscore/minmax merge matrices with their own
        statistics), the test set's score matrices for both matrices (``"self-score"``), or a
        calibration/training ScoreSet; the fusion combines the models it holds
        (:func:`calibrated_models`), so a model only in ``scoreset`` is left out.
    name : str, optional
        Name of the new model (default: ``method`` as given).
    device : torch device for the computation.
    weights : (K,) base weights for ``weighted``/``bssf``/``mean``/``farsight_style`` (skips
        fitting; normalised to sum 1).
    m : exponent of ``asym_ao``.
    seed : seed of the impostor subsample and of the ``bssf`` search.
    face : face model for ``farsight_style`` (default: the one model with quality weights).
    return_result : also return the :class:`FusionResult` (fitted normalisers and weights).

    Returns
    -------
    ScoreSet with model ``name or method`` appended: float32 ``(P, G)`` score_mat and, when
    every model has one, float32 ``(P, S)`` merge_score_mat (normalised as ``calibration``
    says).
    """
    norm_name, _ = parse_method(method)  # an unknown name is reported before anything else
    models = list(scoreset.models)
    if not models:
        raise ValueError("scoreset has no model to fuse")
    paper_self = False
    if isinstance(calibration, str):
        if calibration not in SELF_CALIBRATIONS:
            raise ValueError(f"calibration must be one of {list(SELF_CALIBRATIONS)} or a "
                             f"ScoreSet, got {calibration!r}")
        paper_self = calibration == "self"
        calibration = scoreset
    models = calibrated_models(models, calibration)
    for mm in models:  # a model without a finite score would enter every rule as a constant
        require_finite_score(_tensor(scoreset.score_mats[mm]), f"{mm}/score_mat")
    result = fit_fusion(method, calibration, models, device=device, weights=weights, seed=seed)
    if paper_self and not NORMALISERS[norm_name].needs_labels and norm_name != "raw":
        # the paper's rule: each merge matrix normalised with its own statistics
        result.merge_normalisers = {mm: get_normaliser(norm_name, device).fit("self")
                                    for mm in models}
    out = apply_fusion(result, scoreset, name or method, device=device, m=m, face=face)
    return (out, result) if return_result else out


def calibrated_models(models: Sequence[str], calibration: ScoreSet) -> list:
    """The ``models`` that ``calibration`` holds, in order: what a fusion combines.

    A model the calibration lacks (a fused ``qme`` added to the test file only) is left out of
    the fusion rather than refused; it remains a row of its own in an evaluation.
    """
    held = [m for m in models if m in calibration.score_mats]
    if not held:
        raise ValueError(f"calibration set holds none of the models {list(models)}; it has "
                         f"{calibration.models}")
    return held


def fit_fusion(method: str, calibration: ScoreSet, models: Optional[Sequence[str]] = None, *,
               device: Union[str, torch.device] = "cpu",
               weights: Optional[Sequence[float]] = None, seed: int = 0) -> FusionResult:
    """Fit ``method``'s normalisers (one per model) and weights on ``calibration``.

    The fitted :class:`FusionResult` applies to any ScoreSet with these models, or to
    any block of its probe rows (:func:`apply_fusion`: element-wise per probe), which
    is how :mod:`qme_ext.streaming` fuses files larger than memory.
    """
    norm_name, rule = parse_method(method)
    check_seed(seed)  # numpy would say "expected non-negative integer" without the name
    models = list(calibration.models if models is None else models)
    if not models:
        raise ValueError("no model to fuse")
    missing = [mm for mm in models if mm not in calibration.score_mats]
    if missing:
        raise ValueError(f"calibration set lacks model(s) {missing}; it has "
                         f"{calibration.models}")
    device = check_target_device(device) or torch.device("cpu")
    normalisers = {}
    for mm in models:
        try:
            normalisers[mm] = get_normaliser(norm_name, device).fit(
                (calibration.score_mats[mm], calibration.q_pids, calibration.g_pids))
        except ValueError as exc:
            raise ValueError(f"calibration model {mm!r}: {exc}") from None
    if rule == "llr":
        if weights is not None:
            raise ValueError("weights: the llr rule fits its own weights; pass weights=None")
        base, offset = fit_llr(*_calibration_inputs(normalisers, calibration, models, seed,
                                                    device))
        if not (np.isfinite(base).all() and np.isfinite(offset)):
            raise ValueError(f"fusion {method!r}: fitted weights {base.tolist()} and offset "
                             f"{offset} are not all finite")
        return FusionResult(method, norm_name, rule, normalisers, base, offset=offset)
    base = _fit_weights(rule, normalisers, calibration, models, weights, seed, device)
    if base is not None and not np.isfinite(base).all():
        raise ValueError(f"fusion {method!r}: fitted weights {base.tolist()} are not finite")
    return FusionResult(method, norm_name, rule, normalisers, base)


def apply_fusion(result: FusionResult, scoreset: ScoreSet, name: str, *,
                 device: Union[str, torch.device] = "cpu", m: float = 2.0,
                 face: Optional[str] = None) -> ScoreSet:
    """``scoreset`` with model ``name`` added: ``result`` applied to its matrices.

    Element-wise per probe (``farsight_style`` reads the probe's quality row), so a
    block of probe rows fuses to the same values as the whole matrix's rows.
    """
    device = check_target_device(device) or torch.device("cpu")
    models = list(result.normalisers)
    w_probe = result.weights
    if result.rule == "farsight_style":
        face_index, q = _face_quality(scoreset, models, face)
        w_probe = _per_probe_weights(result.weights, face_index, q)

    fused = _fuse_matrices(result, result.normalisers, scoreset.score_mats, scoreset, w_probe,
                           m, device)
    fused_merge = None
    if all(mm in scoreset.merge_score_mats for mm in models):
        fused_merge = _fuse_matrices(result, result.merge_normalisers or result.normalisers,
                                     scoreset.merge_score_mats, scoreset, w_probe, m,
                                     device).cpu().numpy()
    return scoreset.with_model(name, fused.cpu().numpy(), fused_merge)
