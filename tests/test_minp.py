"""mINP (issue 22): fast-reid's definition on small hand cases, the rank_counts op's
last_pos against the reference, every mode in evaluate's report, intervals, row
blocks, column shards and the CLI table/JSON."""

import numpy as np
import pytest
import torch

from conftest import make_problem, to_device
from qme_ext import metrics
from qme_ext.metrics import core as metrics_core
from qme_ext.metrics.accumulate import TensorSource
from qme_ext.reference import rank_metrics_ref
from report_helpers import cli_table_and_json, evaluation_inputs, hand_case


def fastreid_minp(S, q_pids, g_pids, q_camids, g_camids):
    """fast-reid's ``evaluate_rank`` mINP, written from its definition: sort each row by
    descending score (stable), drop same-pid same-camera entries, find the last correct
    match at 0-based index i in the kept list; INP = (#correct up to i) / (i + 1)."""
    inps = []
    for p in range(S.shape[0]):
        order = np.argsort(-S[p], kind="stable")
        keep = ~((g_pids[order] == q_pids[p]) & (g_camids[order] == q_camids[p]))
        matches = (g_pids[order] == q_pids[p])[keep].astype(np.int64)
        if not matches.any():
            continue
        last = int(np.flatnonzero(matches).max())
        inps.append(np.cumsum(matches)[last] / (last + 1.0))
    return float(np.mean(inps)), inps


def test_hand_case():
    # probe 0 (pid 1, cam 0): gallery in score order: g0 (pid 1, cam 1, good), g1 (pid 2),
    # g2 (pid 1, cam 0, junk), g3 (pid 3), g4 (pid 1, cam 2, good).
    # After junk removal the goods sit at positions 0 and 3: INP = 2 / 4.
    # probe 1 (pid 2, cam 1): its only good g1 is at position 1: INP = 1 / 2.
    # probe 2 (pid 9): no good entry, skipped.
    S, q_pids, q_cams, g_pids, g_cams = hand_case()
    r = metrics.rank_metrics(S, q_pids, g_pids, q_cams, g_cams, per_probe=True)
    assert r.mINP == pytest.approx((0.5 + 0.5) / 2, abs=1e-15)
    np.testing.assert_array_equal(r.inp[:2], [0.5, 0.5])
    assert np.isnan(r.inp[2]) and r.num_skipped == 1
    want, _ = fastreid_minp(S, q_pids, g_pids, q_cams, g_cams)
    assert r.mINP == want


def test_all_goods_on_top_is_one_and_ties_go_to_lower_index():
    S = np.array([[1.0, 1.0, 1.0, 0.0]])
    # goods g0, g3; g1, g2 impostors tied with g0 rank after it (lower index first),
    # so the hardest good is last: INP = 2 / 4
    r = metrics.rank_metrics(S, [5], [5, 6, 7, 5])
    assert r.mINP == 0.5
    r = metrics.rank_metrics(np.array([[3.0, 2.0, 1.0, 0.0]]), [5], [5, 5, 7, 6])
    assert r.mINP == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_general_mode_equals_fastreid(device, seed):
    S, ids = make_problem(seed, P=30, G=120, n_ids=8)
    r = metrics.rank_metrics(to_device(S, device), ids["q_pids"], ids["g_pids"],
                             ids["q_camids"], ids["g_camids"], per_probe=True)
    want, per = fastreid_minp(S, ids["q_pids"], ids["g_pids"], ids["q_camids"],
                              ids["g_camids"])
    assert r.mINP == pytest.approx(want, rel=0, abs=1e-12)
    np.testing.assert_array_equal(r.inp[~np.isnan(r.inp)], per)


@pytest.mark.parametrize("mode", ["general", "sc", "cc"])
def test_every_mode_equals_the_reference(device, mode):
    S, ids = make_problem(4, P=40, G=200, n_ids=10, nan_frac=0.02)
    args = (ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"], ids["q_clothes"],
            ids["g_clothes"])
    r = metrics.rank_metrics(to_device(S, device), *args, mode=mode, per_probe=True)
    ref = rank_metrics_ref(S, *args, mode=mode)
    assert r.mINP == ref["mINP"]
    np.testing.assert_array_equal(r.inp, ref["inp"])


def test_op_last_pos_is_the_last_good_position(device):
    from qme_ext.ops import evaluation as _ops
    S = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7]], device=device)
    offs = torch.tensor([0, 3], device=device)
    index = torch.tensor([0, 2, 4], device=device)
    # mode 0: goods 2 and 0, junk 4 (rank order 1, 4, 2, 3, 0; without 4: 1, 2, 3, 0)
    flags = torch.tensor([1, 1, 2], dtype=torch.uint8, device=device)
    first, ap, n, last, *_ = _ops.rank_counts(S, offs, index, flags, 1, 3)
    assert (first.tolist(), n.tolist(), last.tolist()) == ([[1]], [[2]], [[3]])
    none = _ops.rank_counts(S, offs, index, torch.full((3,), 2, dtype=torch.uint8,
                                                        device=device), 1, 3)
    assert none[3].tolist() == [[-1]] and none[0].tolist() == [[-1]]


def test_report_blocks_and_column_shards():
    S, M, ids = evaluation_inputs(3)
    whole = metrics.evaluate(S, M, *ids)
    q, qc, qk, g, gc, gk, _ = ids
    for name, mode in (("GR", "general"), ("SC", "sc"), ("CC", "cc")):
        assert whole[f"{name}_mINP"] == rank_metrics_ref(S, q, g, qc, gc, qk, gk,
                                                         mode=mode)["mINP"]
    assert metrics.evaluate(S, M, *ids, block_rows=5)["CC_mINP"] == whole["CC_mINP"]
    src = TensorSource(torch.from_numpy(S), torch.from_numpy(M), 7)
    cols = metrics_core._evaluate_source(src, *ids, shard="columns")
    for name in ("GR", "SC", "CC"):
        assert cols[f"{name}_mINP"] == whole[f"{name}_mINP"]


def test_intervals():
    S, M, ids = evaluation_inputs(5)
    rep = metrics.evaluate(S, M, *ids, ci=0.9, n_boot=200)
    for name in ("GR", "SC", "CC"):
        lo, hi = rep[f"{name}_mINP_ci"]
        assert lo <= rep[f"{name}_mINP"] <= hi and lo < hi
    r = metrics.rank_metrics(S, ids[0], ids[3], ids[1], ids[4], ci=0.9, n_boot=200)
    assert r.mINP_ci[0] <= r.mINP <= r.mINP_ci[1]
    assert r.mINP_ci == pytest.approx(rep["GR_mINP_ci"], abs=1e-12)
    # a replicate is the weighted mean of the per-probe INPs (probe unit: one weight a row)
    from qme_ext.metrics.bootstrap import replicate_weights
    rp = metrics.rank_metrics(S, ids[0], ids[3], ids[1], ids[4], ci=0.9, n_boot=20,
                              boot_unit="probe", per_probe=True)
    w = replicate_weights(np.arange(len(ids[0])), 20, 0)
    ok = ~np.isnan(rp.inp)
    want = (w[:, ok] @ rp.inp[ok]) / w[:, ok].sum(axis=1)
    np.testing.assert_allclose(rp.replicates["mINP"], want, rtol=1e-12)


def test_cli_table_json_and_max_memory(tmp_path, capsys):
    header, lines, outs, want = cli_table_and_json(tmp_path, capsys)
    assert "mINP" in header and "CC-mINP" in header
    for rep in outs:
        for name in ("GR", "SC", "CC"):
            assert rep[f"{name}_mINP"] == want[f"{name}_mINP"]
    col = header.index("mINP")
    assert float(lines[2].split()[col]) == pytest.approx(100 * want["GR_mINP"], abs=0.006)
