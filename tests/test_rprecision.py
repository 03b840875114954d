"""R-precision and MAP@R (issue 30): Musgrave et al.'s definitions on hand cases, every
mode against the reference, evaluate's report keys, intervals, row blocks, column shards,
out of core, the CLI table/JSON, and pytorch-metric-learning's AccuracyCalculator on the
same embeddings (skipped when it is not installed)."""

import numpy as np
import pytest
import torch

from conftest import make_problem, to_device
from qme_ext import metrics
from qme_ext.metrics import core as metrics_core
from qme_ext.metrics.accumulate import TensorSource
from qme_ext.reference import rank_metrics_ref
from report_helpers import cli_table_and_json, evaluation_inputs, hand_case

MODES = (("GR", "general"), ("SC", "sc"), ("CC", "cc"))


def test_hand_case():
    # probe 0 (pid 1, cam 0): in score order g0 (good), g1 (pid 2), g2 (pid 1, cam 0, junk),
    # g3 (pid 3), g4 (pid 1, good). Junk removed: goods at positions 0 and 3, R = 2:
    # one good among the first 2 -> R-precision 1/2, MAP@R = (1/2) * (1/1) = 1/2.
    # probe 1 (pid 2): its only good g1 at position 1, R = 1 -> both 0.
    # probe 2 (pid 9): no good entry, skipped.
    S, q_pids, q_cams, g_pids, g_cams = hand_case()
    r = metrics.rank_metrics(S, q_pids, g_pids, q_cams, g_cams, per_probe=True)
    np.testing.assert_array_equal(r.rp[:2], [0.5, 0.0])
    np.testing.assert_array_equal(r.map_r[:2], [0.5, 0.0])
    assert np.isnan(r.rp[2]) and np.isnan(r.map_r[2])
    assert r.RP == 0.25 and r.MAP_at_R == 0.25
    # goods at positions 0, 2, 3 of R = 3: two in the first 3; MAP@R = (1/1 + 2/3) / 3
    r = metrics.rank_metrics(np.array([[4.0, 3.0, 2.0, 1.0, 0.0]]), [5], [5, 6, 5, 5, 7])
    assert r.RP == 2 / 3 and r.MAP_at_R == pytest.approx((1 + 2 / 3) / 3, abs=1e-15)
    # all goods on top: both 1; ties go to the lower column (g1 impostor before g2)
    assert metrics.rank_metrics(np.array([[3.0, 2.0, 1.0]]), [5], [5, 5, 7]).MAP_at_R == 1.0
    r = metrics.rank_metrics(np.array([[1.0, 1.0, 1.0]]), [5], [5, 7, 5])
    assert (r.RP, r.MAP_at_R) == (0.5, 0.5)


@pytest.mark.parametrize("mode", ["general", "sc", "cc"])
def test_every_mode_equals_the_reference(device, mode):
    S, ids = make_problem(4, P=40, G=200, n_ids=6, nan_frac=0.02)
    args = (ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"], ids["q_clothes"],
            ids["g_clothes"])
    r = metrics.rank_metrics(to_device(S, device), *args, mode=mode, per_probe=True)
    ref = rank_metrics_ref(S, *args, mode=mode)
    assert r.RP == pytest.approx(ref["RP"], abs=1e-15)
    assert r.MAP_at_R == pytest.approx(ref["MAP@R"], abs=1e-12)
    np.testing.assert_array_equal(r.rp, ref["rp"])
    np.testing.assert_allclose(r.map_r, ref["map_r"], rtol=0, atol=1e-12)
    assert 0 < r.MAP_at_R <= r.RP < 1 and r.MAP_at_R <= r.mAP


def test_report_keys_blocks_and_column_shards():
    S, M, ids = evaluation_inputs(3)
    whole = metrics.evaluate(S, M, *ids)
    keys = list(whole)
    q, qc, qk, g, gc, gk, _ = ids
    for name, mode in MODES:
        # documented position: right after the mode's mINP
        i = keys.index(f"{name}_mINP")
        assert keys[i + 1:i + 3] == [f"{name}_RP", f"{name}_MAP@R"]
        ref = rank_metrics_ref(S, q, g, qc, gc, qk, gk, mode=mode)
        assert whole[f"{name}_RP"] == pytest.approx(ref["RP"], abs=1e-15)
        assert whole[f"{name}_MAP@R"] == pytest.approx(ref["MAP@R"], abs=1e-12)
    blocks = metrics.evaluate(S, M, *ids, block_rows=5)
    src = TensorSource(torch.from_numpy(S), torch.from_numpy(M), 7)
    cols = metrics_core._evaluate_source(src, *ids, shard="columns")
    for name, _ in MODES:
        for k in ("RP", "MAP@R"):
            assert blocks[f"{name}_{k}"] == whole[f"{name}_{k}"]
            assert cols[f"{name}_{k}"] == whole[f"{name}_{k}"]  # bit for bit


def test_intervals():
    S, M, ids = evaluation_inputs(5)
    rep = metrics.evaluate(S, M, *ids, ci=0.9, n_boot=200)
    for name, _ in MODES:
        for k in ("RP", "MAP@R"):
            lo, hi = rep[f"{name}_{k}_ci"]
            assert lo <= rep[f"{name}_{k}"] <= hi and lo < hi
    r = metrics.rank_metrics(S, ids[0], ids[3], ids[1], ids[4], ci=0.9, n_boot=200)
    assert r.RP_ci == pytest.approx(rep["GR_RP_ci"], abs=1e-12)
    assert r.MAP_at_R_ci == pytest.approx(rep["GR_MAP@R_ci"], abs=1e-12)
    # a replicate is the weighted mean of the per-probe values (probe unit: one weight a row)
    from qme_ext.metrics.bootstrap import replicate_weights
    rp = metrics.rank_metrics(S, ids[0], ids[3], ids[1], ids[4], ci=0.9, n_boot=20,
                              boot_unit="probe", per_probe=True)
    w = replicate_weights(np.arange(len(ids[0])), 20, 0)
    ok = ~np.isnan(rp.rp)
    for per, key in ((rp.rp, "RP"), (rp.map_r, "MAP@R")):
        want = (w[:, ok] @ per[ok]) / w[:, ok].sum(axis=1)
        np.testing.assert_allclose(rp.replicates[key], want, rtol=1e-12)


def test_cli_table_json_and_max_memory(tmp_path, capsys):
    header, lines, outs, want = cli_table_and_json(tmp_path, capsys)
    assert "R-Prec" in header and "MAP@R" in header
    for rep in outs:
        for name, _ in MODES:
            assert rep[f"{name}_RP"] == want[f"{name}_RP"]
            assert rep[f"{name}_MAP@R"] == want[f"{name}_MAP@R"]
    col = header.index("MAP@R")
    assert float(lines[2].split()[col]) == pytest.approx(100 * want["GR_MAP@R"], abs=0.006)


# ---- pytorch-metric-learning ------------------------------------------------------------
def _clustered(seed, n, n_classes, dim=16, spread=0.9):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.normal(size=(n_classes, dim))
    x = centres[labels] + spread * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def _pml(query, q_labels, reference=None, r_labels=None):
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN
    assert pml.__version__
    calc = AccuracyCalculator(include=("precision_at_1", "r_precision",
                                       "mean_average_precision_at_r"),
                              device=torch.device("cpu"), knn_func=CustomKNN(DotProductSimilarity()))
    t = torch.from_numpy
    if reference is None:
        return calc.get_accuracy(t(query), t(q_labels))
    return calc.get_accuracy(t(query), t(q_labels), t(reference), t(r_labels), False)


@pytest.mark.parametrize("seed", [11, 12])
def test_equals_pytorch_metric_learning_query_is_reference(seed):
    """PML with reference = query excludes each query itself; here the query set is the
    gallery and the self entry is junk (camera id = own index: only the diagonal shares
    a camera). Lone labels (no other entry) are skipped by both."""
    x, y = _clustered(seed, 300, 25)
    y[:2] = 1000 + np.arange(2)  # two lone queries
    want = _pml(x, y)
    n = len(y)
    cams, clothes = np.arange(n), np.zeros(n, np.int64)
    rep = metrics.evaluate_embeddings(x, x, q_pids=y, q_camids=cams, q_clothes_ids=clothes,
                                      g_pids=y, g_camids=cams, g_clothes_ids=clothes,
                                      metric="dot")
    assert 0.2 < want["r_precision"] < 0.9  # neither trivial nor hopeless
    assert rep["GR_top1"] == pytest.approx(want["precision_at_1"], abs=1e-12)
    assert rep["GR_RP"] == pytest.approx(want["r_precision"], abs=1e-12)
    assert rep["GR_MAP@R"] == pytest.approx(want["mean_average_precision_at_r"], abs=1e-12)


def test_equals_pytorch_metric_learning_separate_sets():
    """Separate query and reference sets: no camera filter, every same-label entry good
    (rank_metrics without camera ids)."""
    x, y = _clustered(21, 400, 30)
    q, qy, g, gy = x[:120], y[:120], x[120:], y[120:]
    want = _pml(q, qy, g, gy)
    S = torch.from_numpy(q) @ torch.from_numpy(g).T
    r = metrics.rank_metrics(S, qy, gy)
    assert r.cmc[0] == pytest.approx(want["precision_at_1"], abs=1e-12)
    assert r.RP == pytest.approx(want["r_precision"], abs=1e-12)
    assert r.MAP_at_R == pytest.approx(want["mean_average_precision_at_r"], abs=1e-12)
