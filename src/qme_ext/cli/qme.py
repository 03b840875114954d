"""``qme-ext train``, ``qme-ext fuse`` and ``qme-ext demo`` (QME training, fusion, demo).

:data:`COMMANDS` (``name -> (help, add_arguments(parser), run(args))``) is merged into
``qme_ext.cli.COMMANDS``. User errors raise :class:`UserError`: exit status 2 and one line.

- ``train TRAIN.h5 --val VAL.h5 --quality face --out model.pt``: stage 1 (QE, pseudo-quality
  loss) and stage 2 (QME experts, score triplet loss, selection on VAL), checkpoint to ``--out``.
- ``fuse model.pt TEST.h5 --out FUSED.h5``: copy TEST.h5 and add model ``qme`` (score_mat and
  merge_score_mat); the file's model list must equal the checkpoint's, in order.
- ``demo``: synthetic whole-body data -> baselines calibrated on TRAIN -> QE + QME (+ Z = 1 and
  no-QE ablations) -> test metrics table on stdout, ``results.json`` and PNG plots in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional

import numpy as np

from .common import (PROG, UserError, check_device, check_seed_option, format_table,
                     json_value, progress)

__all__ = ["UserError", "run_train",
           "run_fuse", "run_demo", "demo_pipeline", "demo_erc", "COMMANDS", "BASELINES",
           "DEMO_SIZES"]

# baselines of the demo: fusion methods of qme_ext.fusion, calibrated on the training split
BASELINES = ("zscore", "minmax", "rhe", "mean", "weighted", "asym_ao", "bssf", "farsight_style",
             "llr")
# synthetic_wholebody sizes and training budgets of the demo
DEMO_SIZES = {
    "default": dict(data=dict(num_subjects=100, num_train_subjects=100, num_val_subjects=60,
                              num_unknown=25),
                    steps=None, qe_steps=1500, eval_every=None),   # the recipe's budget
    "quick": dict(data=dict(num_subjects=40, num_train_subjects=50, num_val_subjects=30,
                            num_unknown=10),
                  steps=300, qe_steps=200, eval_every=100),
}


def _positive(name: str, value) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")


def _finite(path: str, ss):
    """``ss`` with NaN/inf scores and quality features replaced by the documented rule
    (:func:`qme_ext.qme.finite.replace_nonfinite`), and one warning line when any were."""
    from ..qme.finite import replace_nonfinite
    ss, counts = replace_nonfinite(ss)
    if counts:
        what = ", ".join(f"{n} in {key}" for key, n in counts.items())
        print(f"{PROG}: warning: {path}: NaN/inf entries ({what}) replaced by the QME "
              "reference's rule (NaN -> 0, +-inf -> the largest finite float32 of that sign)",
              file=sys.stderr)
    return ss


def _load_checkpoint(path: str, device: str = "cpu"):
    """(model, qe, meta) of a checkpoint checked against its schema; UserError otherwise."""
    from ..qme.checkpoint import CheckpointError, load_checkpoint
    try:
        return load_checkpoint(path, map_location=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def _check_quality(path: str, ss, qe, meta) -> None:
    """The checkpoint's quality estimator needs ``quality/<name>`` (P, dim) in ``ss``."""
    if qe is None:
        return
    qname, dim = meta["quality"]["name"], meta["quality"]["dim"]
    if qname not in ss.quality:
        raise UserError(f"{path}: missing key 'quality/{qname}' (the checkpoint's quality "
                        f"estimator needs it)")
    got = ss.quality[qname].shape
    if int(np.prod(got[1:])) != int(dim):
        raise UserError(f"{path}: 'quality/{qname}' has shape {tuple(got)}, the checkpoint "
                        f"expects (P, {dim})")


# ------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------
def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("train", metavar="TRAIN.h5", help="training scores: probes vs training "
                   "centres, with quality/<name> features")
    p.add_argument("--val", required=True, metavar="VAL.h5", help="validation scores (with "
                   "merge_score_mat) for model selection and early stopping")
    p.add_argument("--quality", default="face", help="quality feature group quality/<name>; "
                   "also the model giving pseudo-quality labels (default: face)")
    p.add_argument("--face-model", help="model whose scores give pseudo-quality labels "
                   "(default: --quality)")
    p.add_argument("--models", help="comma-separated model order (default: file order)")
    p.add_argument("--out", required=True, metavar="model.pt", help="output checkpoint")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--recipe", default="robust", choices=("robust", "paper"),
                   help="training recipe: robust (default: experts warm-started from a "
                   "quality-gated linear fit of the training pairs, 2100 steps, the last "
                   "weights unless validation clearly prefers an earlier state) or paper "
                   "(docs/definitions.rst, §4: random init, 3000 steps, best validation overall, "
                   "early stopping)")
    p.add_argument("--steps", type=int, help="stage-2 iterations (default: robust 2100, "
                   "paper 3000)")
    p.add_argument("--qe-steps", type=int, help="stage-1 iterations (default 1500)")
    p.add_argument("--eval-every", type=int, help="iterations between validations (default: "
                   "robust 300, paper 100)")
    p.add_argument("--experts", type=int, help="number of experts Z (default 2)")
    p.add_argument("--no-qe", action="store_true", help="no quality estimator (constant gate)")
    p.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    p.add_argument("--checkpoint", metavar="PATH", help="save the training state here at "
                   "every validation (for --resume)")
    p.add_argument("--resume", metavar="PATH", help="continue stage 2 from a --checkpoint file "
                   "(the QE is taken from it)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _train_config(args):
    from ..qme.train import TrainConfig
    for name in ("steps", "qe_steps", "eval_every", "experts"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    cfg = TrainConfig(seed=args.seed, device=args.device, quality=args.quality,
                      face_model=args.face_model, quiet=args.quiet, recipe=args.recipe)
    if args.steps is not None:
        cfg.max_steps = args.steps
    if args.qe_steps is not None:
        cfg.qe_steps = args.qe_steps
    if args.eval_every is not None:
        cfg.eval_every = args.eval_every
    if args.experts is not None:
        cfg.num_experts = args.experts
    return cfg


def _resume_config(args, cfg, qme_args: dict) -> None:
    """The experts' shape of a resumed run is the checkpoint's: adopt it, or refuse an
    ``--experts`` that differs (the saved weights and optimiser state would not fit)."""
    if args.experts is not None and args.experts != qme_args["num_experts"]:
        raise UserError(f"--experts {args.experts}: the checkpoint {args.resume} has "
                        f"{qme_args['num_experts']} experts")
    cfg.num_experts = int(qme_args["num_experts"])
    cfg.ratio = int(qme_args["ratio"])
    cfg.dropout = float(qme_args["dropout"])


def run_train(args) -> int:
    from ..io import load_scores
    from ..qme.checkpoint import save_checkpoint
    from ..qme.selection import fit_predictor
    from ..qme.train import fit_qme, fit_quality_estimator
    check_device(args.device)
    cfg = _train_config(args)
    # outputs against inputs: qme_ext.cli.files (--checkpoint may be the --resume file)
    train = load_scores(args.train, models=args.models)
    val = load_scores(args.val, models=train.models)
    for path, ss in ((args.train, train), (args.val, val)):
        if ss.num_probes == 0 or ss.num_gallery == 0:
            raise UserError(f"{path}: no probe or no gallery entry ({ss.num_probes} x "
                            f"{ss.num_gallery}); nothing to train on")
    for m in train.models:
        if m not in val.merge_score_mats:
            raise UserError(f"{args.val}: model {m!r} has no merge_score_mat (the validation "
                            f"metric needs it)")
    face = cfg.face_model or cfg.quality
    if not args.no_qe and not args.resume:
        for path, ss in ((args.train, train), (args.val, val)):
            if cfg.quality not in ss.quality:
                raise UserError(f"{path}: missing key 'quality/{cfg.quality}' (quality features; "
                                f"available: {sorted(ss.quality) or 'none'})")
        if face not in train.models:
            raise UserError(f"pseudo-quality model {face!r} not among models {train.models}; "
                            f"use --face-model")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UserError(f"--out: directory {out_dir} does not exist")
    progress(args, f"train {args.train}: {train.num_probes} probes x {train.num_gallery} "
                    f"centres, models {','.join(train.models)}; val {val.num_probes} probes")
    qe = None
    if args.resume:
        _, qe, meta = _load_checkpoint(args.resume)
        if list(meta["models"]) != list(train.models):
            raise UserError(f"{args.resume}: checkpoint models {meta['models']} differ from "
                            f"{args.train} models {train.models}")
        if "train_state" not in meta["extra"]:
            raise UserError(f"{args.resume}: checkpoint holds no training state to resume "
                            "from (write one with --checkpoint)")
        _resume_config(args, cfg, meta["qme_args"])
        for path, ss in ((args.train, train), (args.val, val)):
            _check_quality(path, ss, qe, meta)
    train, val = _finite(args.train, train), _finite(args.val, val)
    try:
        if not args.resume and not args.no_qe:
            progress(args, "stage 1: quality estimator")
            qe = fit_quality_estimator(train, val, cfg)
        progress(args, "stage 2: QME experts")
        model = fit_qme(train, val, qe, cfg, resume=args.resume, checkpoint=args.checkpoint)
        if cfg.select:
            progress(args, f"selection: {cfg.cv_folds}-fold subject-wise cross-validation of "
                           "QME, baselines and single models")
        pred, sel = fit_predictor(train, val, qe, cfg, model=model,
                                  log=None if args.quiet else
                                  (lambda msg: print(f"{PROG}: {msg}", file=sys.stderr)))
        save_checkpoint(args.out, model, qe, cfg, train.models,
                        {"best_step": model.best_step, "best_val_overall": model.best_overall,
                         "history": model.history, "safety_net": model.safety_net,
                         "predictor": pred.spec(),
                         "selection": None if sel is None else sel.as_dict()})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    net = model.safety_net or {}
    progress(args, f"wrote {args.out} (predictor: {pred.describe()}; best validation "
                    f"overall {model.best_overall:.4f} at step {model.best_step}"
             + (f"; safety net: kept the start, {net['kept_start']}" if net.get("kept_start")
                else "") + (f"; stratum offsets: {net['offsets']}" if net.get("offsets")
                            else "") + ")")
    return 0


# ------------------------------------------------------------------------------------------
# fuse
# ------------------------------------------------------------------------------------------
def _add_fuse_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="model.pt", help="checkpoint written by 'qme-ext train'")
    p.add_argument("scores", metavar="TEST.h5", help="score file with the checkpoint's models")
    p.add_argument("--out", required=True, metavar="FUSED.h5", help="output: a copy of "
                   "TEST.h5 with the fused model added; TEST.h5 itself updates it in place "
                   "(atomically, its mode kept)")
    p.add_argument("--name", default="qme", help="name of the fused model (default qme)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, default=256, help="probes per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _append_model(src: str, dst: str, name: str, score_mat, merge_score_mat, models) -> None:
    """Copy ``src`` to ``dst`` (atomically) adding group ``name`` and the models attribute.

    The copy is built in memory and written by :func:`qme_ext.io.write_atomic`, so ``dst``
    (which may be ``src``: fuse updates in place) keeps its old bytes and mode on a failure.
    """
    from ..io import hdf5_image, write_atomic

    def add(f):
        f.create_dataset(f"{name}/score_mat", data=score_mat)
        if merge_score_mat is not None:
            f.create_dataset(f"{name}/merge_score_mat", data=merge_score_mat)
        f.attrs["models"] = ",".join(list(models) + [name])

    with open(src, "rb") as fh:
        base = fh.read()
    write_atomic(dst, hdf5_image(add, base))


def run_fuse(args) -> int:
    from ..io import check_model_name, load_scores
    from ..qme.predictor import Predictor
    check_device(args.device)
    _positive("--batch", args.batch)
    try:
        check_model_name(args.name, "--name")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    model, qe, meta = _load_checkpoint(args.model, args.device)
    scores = load_scores(args.scores)
    if scores.num_probes == 0 or scores.num_gallery == 0:
        raise UserError(f"{args.scores}: no probe or no gallery entry ({scores.num_probes} x "
                        f"{scores.num_gallery}); nothing to fuse")
    want = list(meta["models"])
    if scores.models != want:
        raise UserError(f"{args.scores}: models {scores.models} differ from the checkpoint's "
                        f"{want} (same models, same order required)")
    if args.name in scores.models:
        raise UserError(f"{args.scores}: model {args.name!r} already exists")
    _check_quality(args.scores, scores, qe, meta)
    scores = _finite(args.scores, scores)
    model.to(args.device)
    if qe is not None:
        qe.to(args.device)
    const_q = float(meta.get("config", {}).get("const_quality", 0.5))
    pred = Predictor.from_parts(model, qe, meta["extra"].get("predictor"), const_q)
    s, m = pred.fuse_block(scores, batch=args.batch, device=args.device)
    _append_model(args.scores, args.out, args.name, s, m, scores.models)
    progress(args, f"wrote {args.out}: model {args.name!r} added ({scores.num_probes} probes)")
    return 0


# ------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------
def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="qme_demo", metavar="DIR", help="output directory "
                   "(results.json, plots; default qme_demo)")
    p.add_argument("--regime", default="mixed", help="face_good, face_poor or mixed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="data seed (training seed is 42)")
    p.add_argument("--quick", action="store_true", help="small data and short training")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG files")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def _evaluate(ss, S, M) -> dict:
    from ..metrics.core import evaluate
    res = evaluate(S, M, ss.q_pids, ss.q_camids, ss.q_clothes_ids, ss.g_pids, ss.g_camids,
                   ss.g_clothes_ids, ss.unique_g_pids)
    return {k: float(v) for k, v in res.items()}


def _check_regime(regime: str) -> None:
    from ..datasets.synthetic import REGIMES
    if regime not in REGIMES:
        raise UserError(f"unknown --regime {regime!r}; choose from {list(REGIMES)}")


def demo_pipeline(regime: str = "mixed", seed: int = 0, device: str = "cpu",
                  quick: bool = False, train_seed: int = 42, quiet: bool = True,
                  sizes: Optional[dict] = None, baselines=BASELINES, recipe: str = "robust",
                  ablations: bool = True, data_transform=None,
                  config_overrides: Optional[dict] = None) -> dict:
    """Run generate -> baselines -> QE + QME (+ ablations) -> test metrics.

    Returns dict(rows={row: metrics dict}, overall={row: float}, data=synthetic dict,
    fused={row: (score_mat, merge_score_mat)}, quality_test=(P,) QE output,
    config=TrainConfig dict, timings={stage: seconds}). ``recipe`` is the training recipe
    (:data:`qme_ext.qme.train.RECIPES`); ``ablations`` False trains only ``qme`` (not the
    Z = 1 and no-QE rows); ``data_transform`` maps the generated dict before use (the
    accuracy benchmark's generator variations); ``config_overrides`` sets TrainConfig fields
    (the benchmark's ablations, e.g. ``{"open_set": False}``).
    """
    import dataclasses

    from ..datasets.synthetic import synthetic_wholebody
    from ..fusion import fuse
    from ..qme.predictor import Predictor
    from ..qme.selection import fit_predictor
    from ..qme.train import (TrainConfig, estimate_quality, fit_qme, fit_quality_estimator,
                             overall_score)
    _check_regime(regime)
    size = dict(sizes or DEMO_SIZES["quick" if quick else "default"])
    log = (lambda msg: None) if quiet else (
        lambda msg: print(f"{PROG}: {msg}", file=sys.stderr, flush=True))
    t = {}
    t0 = time.time()
    data = synthetic_wholebody(regime, seed=seed, **size["data"])
    if data_transform is not None:
        data = data_transform(data)
    train, val, test = data["train"], data["val"], data["test"]
    t["generate"] = time.time() - t0
    log(f"data ({regime}, seed {seed}): train {train.num_probes}x{train.num_gallery}, val "
        f"{val.num_probes}x{val.num_gallery}, test {test.num_probes}x{test.num_gallery}")
    fused = {m: (test.score_mats[m], test.merge_score_mats[m]) for m in test.models}
    t0 = time.time()
    for meth in baselines:
        f = fuse(test, meth, calibration=train, name=meth, device=device)
        fused[meth] = (f.score_mats[meth], f.merge_score_mats[meth])
    t["baselines"] = time.time() - t0
    cfg = TrainConfig(seed=train_seed, device=device, max_steps=size.get("steps"),
                      qe_steps=size["qe_steps"], eval_every=size.get("eval_every"), quiet=quiet,
                      recipe=recipe, **(config_overrides or {}))
    t0 = time.time()
    log("stage 1: quality estimator")
    qe = fit_quality_estimator(train, val, cfg)
    t["qe"] = time.time() - t0
    variants = (("qme", qe, None), ("qme_z1", qe, 1), ("qme_noqe", None, None))
    if not ablations:
        variants = variants[:1]
    models, predictors = {}, {}
    for row, q_est, z in variants:
        t0 = time.time()
        log(f"stage 2: {row}")
        model = fit_qme(train, val, q_est, cfg, num_experts=z)
        if row == "qme":  # the product: the cross-validated predictor (qme.selection)
            pred, _ = fit_predictor(train, val, q_est, cfg, model=model, log=log)
        else:             # the ablations: their trained QME as it is
            pred = Predictor.from_qme(model, q_est, cfg.const_quality)
        fused[row] = pred.fuse_block(test, device=device)
        models[row], predictors[row] = model, pred
        t[row] = time.time() - t0
    rows = {row: _evaluate(test, S, M) for row, (S, M) in fused.items()}
    return {"rows": rows, "overall": {r: overall_score(v) for r, v in rows.items()},
            "data": data, "fused": fused, "models": models, "qe": qe, "predictors": predictors,
            "quality_test": estimate_quality(qe, test.quality[cfg.quality]),
            "config": dataclasses.asdict(cfg), "timings": t}


DEMO_COLUMNS = (("Rank-1", "GR_top1", None), ("mAP", "GR_mAP", None),
                ("CC-Rank-1", "CC_top1", None), ("CC-mAP", "CC_mAP", None),
                ("TAR@1%FAR", "TAR@1.00%FAR", None),
                ("FNIR@1%FPIR", "FNIR@1.00%FPIR", "FNIR@1.00%FPIR_std"),
                ("overall", "overall", None))


def demo_table(rows: dict, overall: dict) -> str:
    """Fixed-width table (percent) of the demo's rows, with the overall criterion."""
    return format_table({r: {**res, "overall": overall[r]} for r, res in rows.items()},
                        DEMO_COLUMNS)


def _face_rank(test) -> "tuple":
    """1-based rank of the best genuine gallery entry in the face scores (mated probes)."""
    import numpy as np
    S = test.score_mats["face"]
    gen = test.q_pids[:, None] == test.g_pids[None, :]
    mated = gen.any(axis=1)
    best = np.where(gen, S, -np.inf).max(axis=1)
    rank = (S > best[:, None]).sum(axis=1) + 1
    return rank, mated


def demo_erc(res: dict, fmr: float = 1e-3) -> dict:
    """{quality name: ErcResult} of the test split's face scores: the QE's output against
    the face model's own quality (``quality/face_weights``), fixed-threshold definition
    (:mod:`qme_ext.metrics.erc`; probe quality = pair quality)."""
    from ..metrics.erc import erc
    test = res["data"]["test"]
    S = test.score_mats["face"]
    out = {"QE": erc(S, test.q_pids, test.g_pids, res["quality_test"], fmr=fmr)}
    if "face_weights" in test.quality:
        out["face quality"] = erc(S, test.q_pids, test.g_pids, test.quality["face_weights"],
                                  fmr=fmr)
    return out


def _demo_plots(out: str, res: dict) -> list:
    from .. import plots
    if not plots.available():
        return []
    test = res["data"]["test"]
    best_base = max(BASELINES, key=lambda r: res["overall"].get(r, -math.inf))
    show = [r for r in ("face", "body", "gait", "zscore", best_base, "qme_z1", "qme_noqe", "qme")
            if r in res["fused"]]
    mats = {r: res["fused"][r][0] for r in dict.fromkeys(show)}
    written = plots.write_comparison_plots(out, mats, test,
                                           hist_rows=[r for r in ("zscore", "qme") if r in mats])
    # predicted quality against how well the face matcher actually ranked the probe
    plt = plots._pyplot()
    rank, mated = _face_rank(test)
    q = res["quality_test"]
    has_face = res["data"]["meta"]["test"]["has_face"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for sel, label, colour in ((mated & has_face, "face visible", "tab:blue"),
                               (mated & ~has_face, "no face", "tab:red")):
        ax.scatter(rank[sel], q[sel], s=10, alpha=0.6, label=label, c=colour)
    ax.set_xscale("log")
    ax.set_xlabel("rank of the best genuine gallery entry (face scores)")
    ax.set_ylabel("predicted face quality q")
    ax.set_title("QE output vs face rank (test, mated probes)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save_figure(fig, os.path.join(out, "quality_vs_face_rank.png"))
    written.append("quality_vs_face_rank.png")
    if res.get("erc"):
        plots.plot_erc({n: (r.rejected, r.fnmr) for n, r in res["erc"].items()},
                       os.path.join(out, "erc.png"),
                       title="ERC of the face scores, FNMR at FMR 0.1% (fixed threshold)")
        written.append("erc.png")
    return written


def run_demo(args) -> int:
    import numpy as np
    check_device(args.device)
    _check_regime(args.regime)  # before --out is created
    check_seed_option(args.seed)  # the data generator's numpy seed
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} exists and is not a directory")
    os.makedirs(args.out, exist_ok=True)
    res = demo_pipeline(args.regime, seed=args.seed, device=args.device, quick=args.quick,
                        quiet=args.quiet)
    print(f"QME demo: regime {args.regime}, data seed {args.seed}, test split "
          f"({res['data']['test'].num_probes} probes, "
          f"{res['data']['test'].unique_g_pids.size} gallery subjects); values in %, "
          f"overall = Rank-1 + mAP + TAR@1%FAR - FNIR@1%FPIR")
    print(demo_table(res["rows"], res["overall"]))
    res["erc"] = demo_erc(res)
    shown = (0.0, 0.1, 0.2, 0.3)
    print("ERC of the face scores (FNMR % at FMR 0.1%, threshold fixed before rejection), "
          "rejecting the lowest-quality " + "/".join(f"{r:.0%}" for r in shown) + " of probes' "
          "genuine pairs:")
    for name, r in res["erc"].items():
        cells = [f"{100 * r.fnmr[list(r.rejected).index(x)]:.2f}" for x in shown]
        print(f"  {name:<13} " + "  ".join(cells) + f"   (area to 95%: {r.auc:.4f})")

    payload = {"regime": args.regime, "seed": args.seed, "quick": bool(args.quick),
               "config": res["config"], "timings_s": res["timings"],
               "overall": {r: json_value(v) for r, v in res["overall"].items()},
               "rows": {r: {k: json_value(v) for k, v in m.items()} for r, m in res["rows"].items()},
               "training": {r: {"best_step": m.best_step, "best_val_overall": m.best_overall,
                                "history": m.history, "safety_net": m.safety_net}
                            for r, m in res["models"].items()},
               "qe_history": getattr(res["qe"], "history", None),
               "erc": {n: r.as_dict() for n, r in res["erc"].items()}}
    path = os.path.join(args.out, "results.json")
    from ..io import write_atomic
    write_atomic(path, json.dumps(payload, indent=2, default=lambda o: float(o) if isinstance(
        o, np.floating) else None))
    progress(args, f"metrics written to {path}")
    if not args.no_plots:
        written = _demo_plots(args.out, res)
        if written:
            progress(args, f"plots written to {args.out}: {', '.join(written)}")
        else:
            print(f"{PROG}: warning: matplotlib is not installed; no plots", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------
TRAIN_HELP = "train a QME fusion (quality estimator + experts) on score files"
FUSE_HELP = "add the QME-fused model of a checkpoint to a score file"
DEMO_HELP = "synthetic whole-body demo: baselines vs QME, table, JSON and plots"

COMMANDS = {
    "train": (TRAIN_HELP, _add_train_args, run_train),
    "fuse": (FUSE_HELP, _add_fuse_args, run_fuse),
    "demo": (DEMO_HELP, _add_demo_args, run_demo),
}
