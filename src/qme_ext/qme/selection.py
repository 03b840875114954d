"""Choosing the predictor by subject-wise cross-validation (issue 26).

With 25-34 validation subjects one validation number cannot tell a trained QME from a
calibrated baseline (issue 26: a face_good draw lost 12.5 points to ``weighted`` after the
validation criterion had put QME 0.24 ahead). :func:`cross_validate` compares every
candidate on ``k`` subject-disjoint folds of train and validation together:

- the **subjects** of the training split, the enrolled subjects of the validation split and
  its unknown (never enrolled) subjects are each shuffled (``config.seed``) and cut into ``k``
  parts; fold ``f`` holds out part ``f`` of all three;
- the candidates are fitted on the training split without fold ``f``'s subjects (the QME's
  own selection -- warm start, offsets, safety net -- on the validation split without them;
  the quality estimator, trained once on the whole training split, is shared);
- each is scored on fold ``f``'s held-out subjects twice: their training probes against
  their training centres (the merge matrix is the per-subject maximum) and their validation
  probes (unknown ones included) against their validation gallery; the fold's value is the
  mean of the two validation criteria (``smoothed_overall`` with the leave-subject-out
  FNIR: every probe is also a non-mated search, so the open-set tail stays in);
- candidates: the QME (``config.cv_steps`` stage-2 steps per fold -- 300 in the robust recipe -- the recipe's step
  budget in the final refit), every calibrated baseline of :data:`BASELINES`, every single
  model; each once on its own scale and once with the per-probe Z-norm
  (:func:`~qme_ext.qme.predictor.znorm_rows`);
- the winner is the best **mean** over folds; it is refitted on all of the training split
  (the QME: the full-budget training on train with selection on val) and becomes the
  :class:`~qme_ext.qme.Predictor`. The per-fold values, mean and sd of every candidate are
  kept (``SelectionResult.table``) and logged.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

__all__ = ["BASELINES", "SelectionResult", "cross_validate", "criterion", "subset",
           "subject_folds", "fit_predictor"]

BASELINES = ("zscore", "minmax", "rhe", "mean", "weighted", "asym_ao", "bssf",
             "farsight_style", "llr")
SCALES = (None, "znorm")
ENSEMBLE_SIZES = (2, 3, 5)


@dataclasses.dataclass
class SelectionResult:
    """Per-candidate fold criteria; ``chosen`` = (kind, name, scale) of the winner."""

    folds: int
    table: dict            # "kind:name[+scale]" -> list of per-fold criteria
    chosen: str
    ensembles: dict = dataclasses.field(default_factory=dict)  # "ensemble:x" -> members

    def summary(self) -> dict:
        return {k: {"folds": [float(x) for x in v], "mean": float(np.mean(v)),
                    "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                for k, v in self.table.items()}

    def as_dict(self) -> dict:
        return {"folds": self.folds, "chosen": self.chosen, "candidates": self.summary(),
                "ensembles": {k: list(v) for k, v in self.ensembles.items()}}


def subset(ss, probes: np.ndarray, gallery: np.ndarray):
    """The ScoreSet of ``probes`` (P,) bool rows against ``gallery`` (G,) bool columns;
    merge matrices keep the columns of the subjects left in the gallery."""
    from ..io import ScoreSet
    g_pids = ss.g_pids[gallery]
    keep_s = np.isin(ss.unique_g_pids, g_pids)
    return ScoreSet(models=list(ss.models),
                    score_mats={m: np.asarray(v)[probes][:, gallery]
                                for m, v in ss.score_mats.items()},
                    merge_score_mats={m: np.asarray(v)[probes][:, keep_s]
                                      for m, v in ss.merge_score_mats.items()},
                    q_pids=ss.q_pids[probes], q_camids=ss.q_camids[probes],
                    q_clothes_ids=ss.q_clothes_ids[probes], g_pids=g_pids,
                    g_camids=ss.g_camids[gallery], g_clothes_ids=ss.g_clothes_ids[gallery],
                    unique_g_pids=ss.unique_g_pids[keep_s],
                    quality={k: np.asarray(v)[probes] for k, v in ss.quality.items()})


def subject_folds(ids: np.ndarray, k: int, seed: int) -> list:
    """``k`` disjoint arrays of the distinct ``ids``, shuffled with ``seed``."""
    u = np.unique(ids)
    return np.array_split(np.random.default_rng(seed).permutation(u), k)


def criterion(S: np.ndarray, M: Optional[np.ndarray], ss, config) -> float:
    """The robust validation criterion of fused matrices ``S`` (P, G), ``M`` (P, S) of
    ``ss`` (:func:`qme_ext.qme.train._criterion`); ``M`` None: per-subject maxima of S."""
    from .openset import subject_maxima
    from .train import _criterion
    if M is None:
        M, subjects = subject_maxima(S, ss.g_pids)
        M = M.astype(np.float32)
        ss = dataclasses.replace(ss, unique_g_pids=subjects.astype(np.int64))
    return _criterion(S, M, ss, config)[0]


def _key(kind: str, name: str, scale) -> str:
    return f"{kind}:{name}" + (f"+{scale}" if scale else "")


from .predictor import ensemble_rows  # noqa: E402  (numpy only)


def _candidates(train_f, val_f, qe, config, models, baselines, fold_qme: bool) -> dict:
    """{key: Predictor} fitted on one fold's training part."""
    from ..fusion import fit_fusion
    from .predictor import Predictor
    from .train import fit_qme
    out = {}
    bases = {"model:" + m: Predictor.from_model(m, models) for m in models}
    for meth in baselines:
        try:
            bases["fusion:" + meth] = Predictor.from_fusion(fit_fusion(meth, train_f, models),
                                                            meth)
        except ValueError:   # a baseline that cannot be fitted here is no candidate
            continue
    if fold_qme:
        steps = min(config.cv_steps or config.max_steps, config.max_steps)  # never > the refit
        cfg = dataclasses.replace(config, max_steps=steps, quiet=True, select="")
        model = fit_qme(train_f, val_f, qe, cfg, models=models)
        bases["qme:qme"] = Predictor.from_qme(model, qe, config.const_quality)
    for key, pred in bases.items():
        for scale in SCALES:
            p = Predictor(pred.kind, pred.models, model=pred.model, qe=pred.qe,
                          fusion=pred.fusion, name=pred.name, const_quality=pred.const_quality,
                          scale=scale)
            out[key + (f"+{scale}" if scale else "")] = p
    return out


def cross_validate(train, val, qe, config, models: Optional[Sequence[str]] = None,
                   baselines: Sequence[str] = BASELINES, fold_qme: bool = True,
                   log=None) -> SelectionResult:
    """Per-fold criteria of every candidate (module docstring)."""
    models = list(models or train.models)
    k = int(config.cv_folds)
    seed = int(config.seed)
    known = np.isin(val.q_pids, val.unique_g_pids)
    parts = (subject_folds(train.q_pids, k, seed), subject_folds(val.unique_g_pids, k, seed + 1),
             subject_folds(val.q_pids[~known], k, seed + 2) if (~known).any() else
             [np.empty(0, np.int64)] * k)
    table: dict = {}
    kept: dict = {}   # (fold, candidate) -> fused (S, M) of both held-out parts
    failed: set = set()
    for f in range(k):
        t_out = parts[0][f]
        v_out = np.concatenate([parts[1][f], parts[2][f]])
        train_f = subset(train, ~np.isin(train.q_pids, t_out), ~np.isin(train.g_pids, t_out))
        val_f = subset(val, ~np.isin(val.q_pids, v_out), ~np.isin(val.g_pids, v_out))
        evals = _fold_evals(train, val, parts, f)
        for key, pred in _candidates(train_f, val_f, qe, config, models, baselines,
                                     fold_qme).items():
            try:
                fused = [pred.fuse_block(ev) for ev in evals]
            except ValueError:  # e.g. farsight_style without quality/<face>_weights
                failed.add(key)
                continue
            if pred.scale is None:
                kept[f, key] = fused
            table.setdefault(key, []).append(
                float(np.mean([criterion(S, M, ev, config) for (S, M), ev in
                               zip(fused, evals)])))
        if log is not None:
            best = max(table, key=lambda c: table[c][-1])
            log(f"cv fold {f + 1}/{k}: {len(table)} candidates, best {best} "
                f"{table[best][-1]:.4f}" + (f", qme {table['qme:qme'][-1]:.4f}"
                                            if "qme:qme" in table else ""))
    for key in failed:           # a candidate must have a value in every fold
        table.pop(key, None)
    # ensembles of the best candidates on their own scale (members ranked by the CV mean)
    means = {c: float(np.mean(v)) for c, v in table.items()}
    ranked = sorted((c for c in table if "+" not in c), key=lambda c: -means[c])
    sets = {f"ensemble:top{n}": ranked[:n] for n in ENSEMBLE_SIZES if len(ranked) >= n}
    if "qme:qme" in ranked:
        sets["ensemble:qme+top2"] = ["qme:qme"] + [c for c in ranked if c != "qme:qme"][:2]
    for key, members in sets.items():
        for f in range(k):
            S_M = [ensemble_rows([kept[f, c][i] for c in members]) for i in range(2)]
            evals_f = _fold_evals(train, val, parts, f)
            table.setdefault(key, []).append(float(np.mean(
                [criterion(S, M, ev, config) for (S, M), ev in zip(S_M, evals_f)])))
    means = {c: float(np.mean(v)) for c, v in table.items()}
    return SelectionResult(k, table, max(means, key=means.get),
                           {c: m for c, m in sets.items()})


def _fold_evals(train, val, parts, f) -> tuple:
    t_out = parts[0][f]
    v_out = np.concatenate([parts[1][f], parts[2][f]])
    return (subset(train, np.isin(train.q_pids, t_out), np.isin(train.g_pids, t_out)),
            subset(val, np.isin(val.q_pids, v_out), np.isin(val.g_pids, v_out)))


def _refit(key: str, train, model, qe, config, models):
    """The candidate ``key`` ("kind:name[+scale]") fitted on the whole training split (the
    QME: ``model``, trained on all of it)."""
    from ..fusion import fit_fusion
    from .predictor import Predictor
    kind, rest = key.split(":", 1)
    name, _, scale = rest.partition("+")
    scale = scale or None
    if kind == "qme":
        return Predictor.from_qme(model, qe, config.const_quality, scale=scale)
    if kind == "fusion":
        return Predictor.from_fusion(fit_fusion(name, train, models), name, scale=scale)
    return Predictor.from_model(name, models, scale=scale)


def fit_predictor(train, val, qe, config, models: Optional[Sequence[str]] = None,
                  model=None, log=None):
    """(Predictor, SelectionResult or None): the trained QME (``model``, else
    :func:`~qme_ext.qme.train.fit_qme` on train / val) when ``config.select`` is None, else
    the cross-validated winner refitted on the whole training split (module docstring)."""
    from .predictor import Predictor
    from .train import fit_qme
    models = list(models or train.models)
    if model is None:
        model = fit_qme(train, val, qe, config, models=models)
    if not config.select:
        return Predictor.from_qme(model, qe, config.const_quality), None
    sel = cross_validate(train, val, qe, config, models, log=log)
    info = {"selection": sel.as_dict()}
    if sel.chosen in sel.ensembles:
        pred = Predictor.ensemble([_refit(c, train, model, qe, config, models)
                                   for c in sel.ensembles[sel.chosen]], info=info)
    else:
        pred = _refit(sel.chosen, train, model, qe, config, models)
        pred.info = info
    if log is not None:
        s = sel.summary()
        top = sorted(s, key=lambda c: -s[c]["mean"])[:4]
        log("cv selection (" + f"{sel.folds} subject folds; mean +- sd): " + ", ".join(
            f"{c} {s[c]['mean']:.4f} +- {s[c]['sd']:.4f}" for c in top)
            + (f"; qme:qme {s['qme:qme']['mean']:.4f} +- {s['qme:qme']['sd']:.4f}"
               if "qme:qme" in s and "qme:qme" not in top else "")
            + f"; chose {sel.chosen}")
    return pred, sel
