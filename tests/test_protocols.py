"""Multi-query pooling and the CUHK03 single-gallery-shot protocol (qme_ext.metrics.protocols)
on small hand-checked cases."""
import numpy as np
import pytest
import torch

from qme_ext.metrics import rank_metrics
from qme_ext.metrics.protocols import multi_query, multi_query_metrics, single_gallery_shot

NAN = np.nan
# probes: pid 1 cam 0 (twice), pid 2 cam 0, pid 1 cam 1
S = np.array([[0.1, 0.5, 0.3],
              [0.4, 0.2, NAN],
              [0.9, 0.0, 0.0],
              [0.7, 0.6, 0.5]])
QP, QC = [1, 1, 2, 1], [0, 0, 0, 1]
GP, GC = [1, 2, 1], [1, 1, 1]


@pytest.mark.parametrize("reduce,rows", [
    ("max", [[0.4, 0.5, 0.3], [0.7, 0.6, 0.5], [0.9, 0.0, 0.0]]),
    ("mean", [[0.25, 0.35, 0.3], [0.7, 0.6, 0.5], [0.9, 0.0, 0.0]]),  # NaN left out
])
def test_multi_query_pools_by_subject_and_camera(reduce, rows, device):
    mq = multi_query(torch.tensor(S, device=device), QP, QC, reduce=reduce)
    assert mq.scores.device.type == device
    np.testing.assert_allclose(mq.scores.cpu().numpy(), rows, rtol=0, atol=1e-15)
    assert mq.q_pids.tolist() == [1, 1, 2] and mq.q_camids.tolist() == [0, 1, 0]
    assert mq.groups.tolist() == [0, 0, 2, 1] and mq.q_clothes is None


def test_multi_query_all_nan_pool_stays_nan():
    mq = multi_query(np.array([[NAN, 1.0], [NAN, 2.0]]), [3, 3], [0, 0], reduce="mean")
    assert np.isnan(mq.scores[0, 0]) and mq.scores[0, 1] == 1.5
    assert isinstance(mq.scores, np.ndarray)


def test_multi_query_metrics_hand_checked():
    res = multi_query_metrics(S, QP, GP, QC, GC, reduce="max", max_rank=3)
    # query (1, cam 0): order g1 (pid 2), g0, g2 -> goods at positions 1, 2: AP = (1/2 + 2/3)/2
    # query (1, cam 1): every pid-1 entry is camera 1 -> junk, skipped
    # query (2, cam 0): g0 (pid 1), then g1 tied with g2 (lower index first): AP = 1/2
    assert res.num_valid == 2 and res.num_skipped == 1
    assert res.mAP == pytest.approx((7 / 12 + 1 / 2) / 2, abs=1e-15)
    assert res.cmc.tolist() == [0.0, 1.0, 1.0]


def test_multi_query_with_clothes_groups_by_clothes():
    mq = multi_query(S, QP, QC, q_clothes=[0, 1, 0, 0])
    assert mq.groups.tolist() == [0, 1, 3, 2] and mq.q_clothes.tolist() == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="reduce"):
        multi_query(S, QP, QC, reduce="median")


def test_single_shot_with_one_entry_per_subject_is_the_plain_cmc():
    rng = np.random.default_rng(0)
    P, G = 12, 9
    s = rng.normal(size=(P, G))
    gp = np.arange(G)
    qp = rng.integers(0, G + 2, P)  # some probes have no mate: skipped
    res = single_gallery_shot(s, qp, gp, repeats=3, seed=1, max_rank=5)
    ref = rank_metrics(s, qp, gp, max_rank=5)
    assert res.num_valid == ref.num_valid and res.num_skipped == ref.num_skipped
    np.testing.assert_allclose(res.cmc, ref.cmc, rtol=0, atol=1e-15)
    assert res.mAP == pytest.approx(ref.mAP, abs=1e-15)  # one mate: AP = 1/rank
    assert (res.cmc_repeats == ref.cmc).all() and (res.mAP_repeats == res.mAP_repeats[0]).all()
    assert res.cmc_std.max() < 1e-15 and res.mAP_std < 1e-15


def test_single_shot_removes_junk_before_drawing():
    # probe pid 0 cam 0. g0: pid 0 cam 0 (junk, best score); g1: pid 0 cam 1 (the only
    # genuine left); g2, g3: pid 1, drawn half of the time each
    s = np.array([[0.95, 0.3, 0.5, 0.1]])
    res = single_gallery_shot(s, [0], [0, 0, 1, 1], [0], [0, 1, 1, 1], repeats=200, seed=3,
                              max_rank=2)
    r1 = res.cmc_repeats[:, 0]
    assert set(r1.tolist()) == {0.0, 1.0}  # both impostors were drawn at least once
    np.testing.assert_array_equal(res.mAP_repeats, np.where(r1 == 1, 1.0, 0.5))
    assert (res.cmc_repeats[:, 1] == 1).all()
    assert 0.35 < res.cmc[0] < 0.65  # P(rank 1) = 1/2
    assert res.cmc_std[0] == pytest.approx(r1.std(ddof=1))


def test_single_shot_probability_and_determinism():
    # genuine 0.9 or 0.2, impostor 0.5 or 0.1, each with probability 1/2: P(rank 1) = 3/4
    s = np.array([[0.9, 0.2, 0.5, 0.1]])
    a = single_gallery_shot(s, [0], [0, 0, 1, 1], repeats=2000, seed=5, max_rank=2)
    assert abs(a.cmc[0] - 0.75) < 0.04
    b = single_gallery_shot(s, [0], [0, 0, 1, 1], repeats=2000, seed=5, max_rank=2)
    np.testing.assert_array_equal(a.cmc_repeats, b.cmc_repeats)
    c = single_gallery_shot(s, [0], [0, 0, 1, 1], repeats=2000, seed=6, max_rank=2)
    assert (a.cmc_repeats != c.cmc_repeats).any()


def test_single_shot_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        single_gallery_shot(S[:, :2], QP, [1, 2], repeats=0)
    with pytest.raises(ValueError, match="camids"):
        single_gallery_shot(S[:, :2], QP, [1, 2], q_camids=QC)


def test_cli_multi_query_and_single_shot(tmp_path, capsys):
    import json

    from qme_ext.cli import main
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    scores = make_example_scoreset(num_probes=12, num_gallery=18, num_subjects=4, seed=2)
    save_scores(tmp_path / "ex.h5", scores)
    out = tmp_path / "m.json"
    rc = main(["evaluate", str(tmp_path / "ex.h5"), "--quiet", "--multi-query", "mean",
               "--single-shot", "3", "--seed", "7", "--json", str(out)])
    assert rc == 0
    assert "MQ-mean-R1" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    m = scores.models[0]
    ids = (scores.q_pids, scores.g_pids, scores.q_camids, scores.g_camids)
    mq = multi_query_metrics(scores.score_mats[m], *ids, reduce="mean")
    ss = single_gallery_shot(scores.score_mats[m], *ids, repeats=3, seed=7)
    assert rep[m]["MQ_mAP"] == mq.mAP and rep[m]["MQ_top5"] == mq.cmc[4]
    assert rep[m]["SGS_top1"] == ss.cmc[0] and rep[m]["SGS_mAP_std"] == ss.mAP_std
    assert main(["evaluate", str(tmp_path / "ex.h5"), "--quiet", "--single-shot", "0"]) == 2
    assert "--single-shot" in capsys.readouterr().err
