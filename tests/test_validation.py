"""Bad inputs raise ValueError/TypeError naming the argument (never a crash)."""
import numpy as np
import pytest
import torch

from qme_ext import metrics

S = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
Q = np.array([0, 1, 2, 3])
G = np.array([0, 1, 2, 3, 4, 5])


@pytest.mark.parametrize("bad,exc,match", [
    (np.zeros((0, 6), np.float32), ValueError, "scores: empty"),
    (np.zeros((4, 0), np.float32), ValueError, "scores: empty"),
    (np.zeros(6, np.float32), ValueError, "scores: expected a 2-D"),
    (np.zeros((4, 6), np.int32), TypeError, "scores: expected a floating"),
    (torch.zeros((4, 6), dtype=torch.int64), TypeError, "scores: expected dtype"),
    ([[0.0] * 6] * 4, TypeError, "scores: expected a numpy array or torch tensor"),
])
def test_bad_scores(bad, exc, match):
    with pytest.raises(exc, match=match):
        metrics.rank_metrics(bad, Q, G)


@pytest.mark.parametrize("kw,match", [
    (dict(q_pids=np.array([0, 1, 2])), "q_pids: expected 4 ids"),
    (dict(g_pids=np.array([0.5, 1, 2, 3, 4, 5])), "g_pids: float ids must hold integers"),
    (dict(g_pids=np.array([np.nan, 1, 2, 3, 4, 5])), "g_pids: ids must be finite"),
    (dict(q_pids=np.array(["a", "b", "c", "d"])), "q_pids: expected integer ids"),
])
def test_bad_ids(kw, match):
    args = dict(scores=S, q_pids=Q, g_pids=G)
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        metrics.rank_metrics(**args)


def test_mode_needs_clothes_and_cameras():
    with pytest.raises(ValueError, match="mode='cc' needs camera ids and clothes ids"):
        metrics.rank_metrics(S, Q, G, mode="cc")
    with pytest.raises(ValueError, match="mode: expected one of"):
        metrics.rank_metrics(S, Q, G, mode="xx")
    with pytest.raises(ValueError, match="give both camera id vectors"):
        metrics.rank_metrics(S, Q, G, q_camids=Q)
    with pytest.raises(ValueError, match="max_rank"):
        metrics.rank_metrics(S, Q, G, max_rank=0)


def test_unsupported_device():
    with pytest.raises(ValueError, match="unsupported device"):
        metrics.rank_metrics(torch.zeros((4, 6), device="meta"), Q, G)


def test_negative_strides_are_copied():
    res = metrics.rank_metrics(S[::-1], Q[::-1], G, per_probe=True)
    ref = metrics.rank_metrics(np.ascontiguousarray(S[::-1]), Q[::-1].copy(), G, per_probe=True)
    np.testing.assert_array_equal(res.ap, ref.ap)
