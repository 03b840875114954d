"""Multi-query and single-gallery-shot (issue 30) out of core, with intervals and sharded:
block sources give the in-memory results bit for bit, the CLI's --max-memory JSON equals
the in-memory one (with --ci), and 2 gloo processes (MQ column shards, SGS row shards)
give one process's result on every rank."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import make_problem
from qme_ext.metrics.accumulate import TensorSource
from qme_ext.metrics.bootstrap import options
from qme_ext.metrics.protocols import (multi_query_metrics, multi_query_source,
                                       single_gallery_shot, single_gallery_shot_source)
from test_distributed import run_gloo_workers


def _problem(seed=0, P=45, G=120):
    S, ids = make_problem(seed, P=P, G=G, n_ids=9, nan_frac=0.03)
    return S, ids


def _same_rank(a, b):
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP, a.RP, a.MAP_at_R, a.num_valid) == \
        (b.mAP, b.mINP, b.RP, b.MAP_at_R, b.num_valid)


@pytest.mark.parametrize("reduce", ["max", "mean"])
@pytest.mark.parametrize("block_rows,per_pass", [(None, None), (4, 3), (7, 1)])
def test_multi_query_source_equals_in_memory(reduce, block_rows, per_pass):
    S, ids = _problem(1)
    args = (ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"], ids["q_clothes"],
            ids["g_clothes"])
    want = multi_query_metrics(S, *args, reduce=reduce, mode="cc", ci=0.9, n_boot=50)
    got = multi_query_source(TensorSource(torch.from_numpy(S), None, block_rows), *args,
                             reduce=reduce, mode="cc", queries_per_pass=per_pass,
                             boot=options(0.9, 50, 0, "subject"))
    _same_rank(got, want)
    np.testing.assert_array_equal(got.cmc_ci, want.cmc_ci)
    assert got.mAP_ci == want.mAP_ci and want.mAP_ci[0] < want.mAP_ci[1]


@pytest.mark.parametrize("block_rows", [1, 5, 256])
def test_single_shot_draws_do_not_depend_on_blocks(block_rows):
    S, ids = _problem(2)
    args = (ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"])
    want = single_gallery_shot(S, *args, repeats=4, seed=3, ci=0.9, n_boot=40)
    got = single_gallery_shot(S, *args, repeats=4, seed=3, block_rows=block_rows)
    np.testing.assert_array_equal(got.cmc_repeats, want.cmc_repeats)
    src = single_gallery_shot_source(TensorSource(torch.from_numpy(S), None, block_rows), *args,
                                     repeats=4, seed=3, boot=options(0.9, 40, 0, "subject"))
    np.testing.assert_array_equal(src.cmc_repeats, want.cmc_repeats)
    np.testing.assert_array_equal(src.cmc_ci, want.cmc_ci)
    assert src.mAP == want.mAP and src.mAP_ci == want.mAP_ci
    lo, hi = want.mAP_ci
    assert lo <= want.mAP <= hi and lo < hi
    assert (want.cmc_ci[:, 0] <= want.cmc + 1e-15).all()
    assert (want.cmc <= want.cmc_ci[:, 1] + 1e-15).all()


def test_cli_max_memory_and_ci_equal_in_memory(tmp_path, capsys):
    from qme_ext.cli import main
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    scores = make_example_scoreset(num_probes=30, num_gallery=50, num_subjects=6, seed=4)
    save_scores(tmp_path / "ex.h5", scores)
    reps = []
    for extra in ([], ["--max-memory", "6KB"]):
        out = tmp_path / f"m{len(extra)}.json"
        assert main(["evaluate", str(tmp_path / "ex.h5"), "--quiet", "--multi-query", "mean",
                     "--single-shot", "3", "--seed", "7", "--ci", "0.9", "--n-boot", "40",
                     "--fusion", "zscore", "--calibration", str(tmp_path / "ex.h5"),
                     "--json", str(out), *extra]) == 0
        assert "MQ-mean-R1" in capsys.readouterr().out
        reps.append(json.loads(out.read_text()))
    m = scores.models[0]
    keys = [k for k in reps[0][m] if k.startswith(("MQ_", "SGS_"))]
    assert "MQ_mAP_ci" in keys and "SGS_top1_ci" in keys
    for row in (m, "zscore"):  # a model and a fusion row (fused block by block)
        for k in keys:
            assert reps[1][row][k] == reps[0][row][k], (row, k)
    ids = (scores.q_pids, scores.g_pids, scores.q_camids, scores.g_camids)
    mq = multi_query_metrics(scores.score_mats[m], *ids, reduce="mean", ci=0.9, n_boot=40)
    assert reps[1][m]["MQ_mAP"] == mq.mAP and reps[1][m]["MQ_mAP_ci"] == list(mq.mAP_ci)


# ---- 2 gloo processes -------------------------------------------------------------------
def _worker(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from qme_ext.metrics.distributed import TorchReducer
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        red = TorchReducer()
        S, ids = _problem(5)
        P, G = S.shape
        args = (ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"])
        # multi-query, gallery columns sharded: every probe, some columns
        cut = 50
        cols = slice(0, cut) if rank == 0 else slice(cut, G)
        want = multi_query_metrics(S, *args, reduce="mean", ci=0.9, n_boot=30)
        got = multi_query_source(TensorSource(torch.from_numpy(S[:, cols]), None, 6),
                                 ids["q_pids"], ids["g_pids"][cols], ids["q_camids"],
                                 ids["g_camids"][cols], reduce="mean", red=red,
                                 shard="columns", col_offset=cols.start,
                                 boot=options(0.9, 30, 0, "subject"))
        _same_rank(got, want)
        assert got.mAP_ci == want.mAP_ci
        # single-gallery-shot, probe rows sharded (uneven)
        rows = slice(0, 17) if rank == 0 else slice(17, P)
        want = single_gallery_shot(S, *args, repeats=3, seed=2, ci=0.9, n_boot=30)
        got = single_gallery_shot_source(
            TensorSource(torch.from_numpy(S[rows]), None, 5), ids["q_pids"][rows],
            ids["g_pids"], ids["q_camids"][rows], ids["g_camids"], repeats=3, seed=2,
            boot=options(0.9, 30, 0, "subject"), red=red)
        np.testing.assert_array_equal(got.cmc_repeats, want.cmc_repeats)
        assert got.mAP_ci == want.mAP_ci and got.num_valid == want.num_valid
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def warm():
    S, ids = _problem(0, P=8, G=20)
    multi_query_metrics(S, ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"])
    import torch.distributed  # noqa: F401  (imported once in the parent, before fork)


def test_gloo_two_processes_equal_one_process(warm):
    run_gloo_workers(_worker, 2)
