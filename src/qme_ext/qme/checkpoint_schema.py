"""The schema a QME checkpoint is checked against before any of it is used.

A checkpoint is a file users pass around, edit and truncate; everything
:func:`qme_ext.qme.checkpoint.load_checkpoint` (``qme-ext fuse``) and ``train --resume``
read from it is checked here first, so that a tampered or foreign file is one
:class:`CheckpointError` naming the key, never a traceback from deep inside torch and
never a model of NaN weights:

* top level: a dict with ``format``, ``models`` (non-empty distinct names without ',' or
  '/'), ``qme_args`` (``num_experts`` >= 1, ``ratio`` >= 1, ``dropout`` in [0, 1)),
  ``qme_state``, ``qe_args``/``qe_state`` (both None, or ``in_dim``, ``hidden``, ``mid`` >= 1
  and a state), ``quality`` (``name``, ``dim`` = ``in_dim`` with a QE), ``config`` and
  ``extra`` dicts (``config["const_quality"]``, when present, a number in [0, 1]);
* every state dict: exactly the keys, shapes and kinds (floating or integer) of the module
  its arguments build (built on torch's ``meta`` device first, so absurd arguments
  allocate nothing), every floating tensor finite;
* ``extra["train_state"]`` (``train --resume``): counters, the best weights (the same
  schema as ``qme_state``), the history lists, an Adam state whose moments match the
  parameters' shapes and are finite, the scheduler dict and the RNG state;
* ``extra["open_set"]`` (what ``predict`` applies, issue 27): a dict whose
  ``quality_model`` is None or one of ``models``, ``quality_name`` None or a name, and
  whose ``calibration`` (the per-stratum offsets) is None or ``edges`` (3 non-NaN
  quartiles), ``keys`` (T distinct stratum integers) and ``offsets`` (T finite numbers
  that float32 holds: a NaN or 1e39 offset would make every fused score NaN or inf),
  ``quality_index`` None or a model index;
* ``extra["safety_net"]``, ``best_step``, ``best_val_overall``, ``history`` (what
  ``train`` records): None or a dict of names and numbers, an integer >= 0, a number, a
  dict of number lists.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["FORMAT", "CheckpointError", "check_payload", "check_train_state"]

FORMAT = "qme_ext.qme/1"  # the ``format`` entry of every checkpoint


class CheckpointError(ValueError):
    """A file is not a readable QME checkpoint."""


def _fail(path: str, key: str, why: str):
    raise CheckpointError(f"{path}: not a usable QME checkpoint: '{key}' {why}")


def _int(path, key, value, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        _fail(path, key, f"must be an integer >= {lo}, got {value!r}")
    return int(value)


def _number(path, key, value, lo: float, hi: float, hi_open: bool = False) -> float:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi))
    if not ok:
        _fail(path, key, f"must be a number in [{lo}, {hi}{')' if hi_open else ']'}, "
                         f"got {value!r}")
    return float(value)


def _dict(path, key, value) -> dict:
    if not isinstance(value, dict):
        _fail(path, key, f"must be a dict, got {type(value).__name__}")
    return value


def _args(path, key, value, required: tuple, optional: tuple = ()) -> dict:
    value = _dict(path, key, value)
    missing = [k for k in required if k not in value]
    extra = [k for k in value if k not in required + optional]
    if missing or extra:
        _fail(path, key, f"must hold the keys {list(required)}" + (
            f", missing {missing}" if missing else "") + (f", unknown {extra}" if extra else ""))
    return value


def _meta_state(build) -> dict:
    """{key: tensor on 'meta'} of the module ``build()`` makes: shapes without memory."""
    with torch.device("meta"):
        return build().state_dict()


def _check_state(path: str, key: str, state, want: dict) -> None:
    """``state`` has exactly the keys of ``want``, each a tensor of the same shape and kind
    (floating or not), floating tensors finite."""
    state = _dict(path, key, state)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing or extra:
        _fail(path, key, f"does not fit the model its arguments build: "
                         + (f"missing {missing[:3]} " if missing else "")
                         + (f"unknown {extra[:3]}" if extra else ""))
    for name, ref in want.items():
        t = state[name]
        if not isinstance(t, torch.Tensor):
            _fail(path, f"{key}.{name}", f"must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != tuple(ref.shape):
            _fail(path, f"{key}.{name}", f"has shape {tuple(t.shape)}, the model needs "
                                         f"{tuple(ref.shape)}")
        if t.is_floating_point() != ref.is_floating_point() or t.is_complex():
            _fail(path, f"{key}.{name}", f"has dtype {t.dtype}, the model needs {ref.dtype}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            _fail(path, f"{key}.{name}", "holds NaN or inf weights")


def check_payload(data, path: str) -> None:
    """Check a loaded checkpoint ``data`` (see the module docstring); CheckpointError naming
    ``path`` and the first key that is wrong."""
    from .modules import QME, QualityEstimator
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise CheckpointError(f"{path}: not a QME checkpoint (format {fmt!r}, expected "
                              f"{FORMAT!r})")
    for key in ("models", "qme_args", "qme_state", "quality", "config", "extra"):
        if key not in data:
            _fail(path, key, "is missing")
    models = data["models"]
    if (not isinstance(models, (list, tuple)) or not models
            or not all(isinstance(m, str) and m.strip() == m and m and "," not in m
                       and "/" not in m for m in models) or len(set(models)) != len(models)):
        _fail(path, "models", f"must be a non-empty list of distinct model names, got "
                              f"{models!r}"[:200])
    qa = _args(path, "qme_args", data["qme_args"], ("num_experts", "ratio", "dropout"),
               ("use_kernel",))
    _int(path, "qme_args.num_experts", qa["num_experts"])
    _int(path, "qme_args.ratio", qa["ratio"])
    _number(path, "qme_args.dropout", qa["dropout"], 0.0, 1.0, hi_open=True)
    if isinstance(data["qme_state"], dict) and qa["num_experts"] > len(data["qme_state"]):
        # each expert has its own weights: more experts than tensors cannot fit (and
        # building a billion of them, even on 'meta', would hang)
        _fail(path, "qme_args.num_experts", f"= {qa['num_experts']} does not fit the "
                                            f"{len(data['qme_state'])} tensors of 'qme_state'")
    qme_want = _meta_state(lambda: QME(list(models), **qa))
    _check_state(path, "qme_state", data["qme_state"], qme_want)
    qe_args, qe_state = data.get("qe_args"), data.get("qe_state")
    quality = _dict(path, "quality", data["quality"])
    if (qe_args is None) != (qe_state is None):
        _fail(path, "qe_args", "and 'qe_state' must both be given or both be None")
    if qe_args is not None:
        qe_args = _args(path, "qe_args", qe_args, ("in_dim", "hidden", "mid", "dropout"))
        in_dim = _int(path, "qe_args.in_dim", qe_args["in_dim"])
        if qe_args["hidden"] is not None:
            _int(path, "qe_args.hidden", qe_args["hidden"])
        _int(path, "qe_args.mid", qe_args["mid"])
        _number(path, "qe_args.dropout", qe_args["dropout"], 0.0, 1.0, hi_open=True)
        _check_state(path, "qe_state", qe_state, _meta_state(lambda: QualityEstimator(**qe_args)))
        name = quality.get("name")
        if not isinstance(name, str) or not name:
            _fail(path, "quality.name", f"must name the quality features, got {name!r}")
        if quality.get("dim") != in_dim:
            _fail(path, "quality.dim", f"must equal qe_args.in_dim = {in_dim}, got "
                                       f"{quality.get('dim')!r}")
    config = _dict(path, "config", data["config"])
    if "const_quality" in config:
        _number(path, "config.const_quality", config["const_quality"], 0.0, 1.0)
    extra = _dict(path, "extra", data["extra"])
    if "train_state" in extra:
        check_train_state(extra["train_state"], qme_want, path)
    _check_extra(path, extra, list(models))


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _name_or_none(path, key, value, allowed=None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        _fail(path, key, f"must be None or " + (f"one of {allowed}" if allowed is not None
                                                else "a name") + f", got {value!r}"[:200])


def _numbers(path, key, values, n=None, finite=True, limit=None) -> list:
    if not isinstance(values, (list, tuple)) or not all(_real(v) for v in values):
        _fail(path, key, "must be a list of numbers")
    if n is not None and len(values) != n:
        _fail(path, key, f"must hold {n} numbers, got {len(values)}")
    for v in values:
        bad = (not math.isfinite(v)) if finite else math.isnan(v)
        if bad or (limit is not None and abs(v) > limit):
            _fail(path, key, "must hold " + ("finite numbers" if finite else "numbers, not NaN")
                  + (f" within +-{limit:.3g} (float32)" if limit is not None else "")
                  + f", got {v!r}")
    return list(values)


def _check_extra(path: str, extra: dict, models: list) -> None:
    """The fields of ``extra`` that ``predict`` and ``train`` read (module docstring)."""
    spec = extra.get("open_set")
    if spec is not None and spec is not False:
        spec = _dict(path, "extra.open_set", spec)
        _name_or_none(path, "extra.open_set.quality_model", spec.get("quality_model"), models)
        _name_or_none(path, "extra.open_set.quality_name", spec.get("quality_name"))
        _name_or_none(path, "extra.open_set.method", spec.get("method"))
        cal = spec.get("calibration")
        if cal is not None:
            key = "extra.open_set.calibration"
            cal = _args(path, key, cal, ("edges", "keys", "offsets"), ("quality_index",))
            _numbers(path, f"{key}.edges", cal["edges"], n=3, finite=False)
            keys = cal["keys"]
            if not isinstance(keys, (list, tuple)) or not all(
                    isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in keys) \
                    or len(set(keys)) != len(keys):
                _fail(path, f"{key}.keys", "must be a list of distinct stratum integers")
            _numbers(path, f"{key}.offsets", cal["offsets"], n=len(keys),
                     limit=float(np.finfo(np.float32).max))
            qi = cal.get("quality_index")
            if qi is not None and (_int(path, f"{key}.quality_index", qi, lo=0) >= len(models)):
                _fail(path, f"{key}.quality_index", f"must index one of the {len(models)} "
                                                    f"models, got {qi}")
    net = extra.get("safety_net")
    if net is not None:
        net = _dict(path, "extra.safety_net", net)
        for k, v in net.items():
            where = f"extra.safety_net.{k}"
            if isinstance(v, dict):
                if not all(_real(x) for x in v.values()):
                    _fail(path, where, "must map names to numbers")
            elif not (v is None or isinstance(v, str) or _real(v)):
                _fail(path, where, f"must be None, a name or a number, got {v!r}"[:200])
    if "best_step" in extra:
        _int(path, "extra.best_step", extra["best_step"], lo=0)
    if "best_val_overall" in extra and not _real(extra["best_val_overall"]):
        _fail(path, "extra.best_val_overall", f"must be a number, got "
                                              f"{extra['best_val_overall']!r}"[:200])
    if "history" in extra and extra["history"] is not None:
        hist = _dict(path, "extra.history", extra["history"])
        for k, v in hist.items():
            if not isinstance(v, (list, tuple)) or not all(_real(x) for x in v):
                _fail(path, f"extra.history.{k}", "must be a list of numbers")


def check_train_state(state, qme_want: dict, path: str) -> None:
    """``extra["train_state"]`` of a ``--checkpoint`` file: what ``train --resume`` reads."""
    key = "extra.train_state"
    st = _args(path, key, state, ("step", "best", "best_step", "bad", "best_state", "history",
                                  "optimizer", "scheduler", "torch_rng"), ("cuda_rng",))
    for name in ("step", "best_step", "bad"):
        _int(path, f"{key}.{name}", st[name], lo=0)
    best = st["best"]
    if not isinstance(best, numbers.Real) or isinstance(best, bool) or math.isnan(best):
        _fail(path, f"{key}.best", f"must be a number, got {best!r}")
    if st["best_state"] is not None:
        _check_state(path, f"{key}.best_state", st["best_state"], qme_want)
    hist = _args(path, f"{key}.history", st["history"], ("step", "train_loss", "val_overall"))
    for name, values in hist.items():
        if not isinstance(values, list) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            _fail(path, f"{key}.history.{name}", "must be a list of numbers")
    _check_adam(path, f"{key}.optimizer", st["optimizer"], list(qme_want.items()))
    _dict(path, f"{key}.scheduler", st["scheduler"])
    want_rng = torch.get_rng_state()
    rng = st["torch_rng"]
    if (not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8
            or rng.shape != want_rng.shape):
        _fail(path, f"{key}.torch_rng", f"must be a uint8 tensor of shape "
                                        f"{tuple(want_rng.shape)} (torch.get_rng_state())")
    cuda = st.get("cuda_rng")
    if cuda is not None and (not isinstance(cuda, torch.Tensor) or cuda.dtype != torch.uint8):
        _fail(path, f"{key}.cuda_rng", "must be None or a uint8 tensor")


def _check_adam(path: str, key: str, opt, named: list) -> None:
    """An Adam ``state_dict`` over the QME's parameters (the floating entries of ``named``
    that are parameters: BatchNorm's running statistics are buffers)."""
    opt = _args(path, key, opt, ("state", "param_groups"))
    groups = opt["param_groups"]
    if not isinstance(groups, list) or not groups or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        _fail(path, f"{key}.param_groups", "must be a non-empty list of dicts with 'params'")
    ids = [i for g in groups for i in g["params"]]
    shapes = [tuple(t.shape) for n, t in named if not n.endswith(("running_mean", "running_var",
                                                                   "num_batches_tracked"))]
    if len(ids) != len(shapes) or not all(isinstance(i, int) for i in ids) \
            or len(set(ids)) != len(ids):
        _fail(path, f"{key}.param_groups", f"must list {len(shapes)} distinct parameter ids "
                                           f"(the model's parameters), got {len(ids)}")
    position = {i: n for n, i in enumerate(ids)}
    state = _dict(path, f"{key}.state", opt["state"])
    for pid, st in state.items():
        if pid not in position:
            _fail(path, f"{key}.state", f"has an entry for unknown parameter id {pid!r}")
        st = _dict(path, f"{key}.state.{pid}", st)
        for name, t in st.items():
            if not isinstance(t, torch.Tensor):
                _fail(path, f"{key}.state.{pid}.{name}", "must be a tensor")
            if name != "step" and tuple(t.shape) != shapes[position[pid]]:
                _fail(path, f"{key}.state.{pid}.{name}", f"has shape {tuple(t.shape)}, the "
                                                         f"parameter has {shapes[position[pid]]}")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                _fail(path, f"{key}.state.{pid}.{name}", "holds NaN or inf")
