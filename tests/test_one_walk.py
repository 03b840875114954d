"""TAR@FAR's refinement digit counted in the first walk (issue 29): the engine walks a
source once; a second walk happens only when the first block mis-predicts the bins
that hold the thresholds, and the report is the same bits either way."""
import numpy as np
import pytest
import torch

from qme_ext import metrics
from qme_ext.metrics import accumulate as acc
from qme_ext.metrics import embeddings as emb
from qme_ext.metrics import order_stats
from qme_ext.reference.metrics import tar_at_far_ref
from report_helpers import assert_same_report, evaluation_inputs
from test_embeddings import feature_problem, positional


def _problem(seed=3, P=96, G=4000, n_ids=40):
    return feature_problem(seed, P=P, G=G, D=16, n_ids=n_ids, quantise=False)


def _evaluate(q, g, ids, **kw):
    sources = []
    rep = metrics.evaluate_embeddings(q, g, **ids, source_out=sources, **kw)
    return rep, sources[0]


def _want(q, g, ids, metric="cosine", block_rows=None):
    S, M = metrics.embedding_matrices(q, g, g_pids=ids["g_pids"], metric=metric,
                                      block_rows=block_rows)
    return metrics.evaluate(S, M, *positional(ids, np.unique(ids["g_pids"])),
                            larger_is_better=metric != "euclidean")


@pytest.fixture
def small_matmuls(monkeypatch):
    monkeypatch.setattr(emb, "MATMUL_ROWS", 8)
    monkeypatch.setattr(emb, "GALLERY_TILE", 256)


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_embeddings_in_one_walk(metric, small_matmuls):
    q, g, ids = _problem()
    for block_rows in (48, 96):  # two blocks; one
        got, source = _evaluate(q, g, ids, metric=metric, block_rows=block_rows)
        assert source.walks == 1
        assert_same_report(got, _want(q, g, ids, metric, block_rows))


def test_a_misleading_first_block_walks_again(small_matmuls):
    """The first block's probes score far below the rest's (rows in a sorted order), so
    its estimate of the threshold bins misses them: a second walk, the same report."""
    q, g, ids = _problem(4)
    q = q.copy()
    q[:16] *= 1e-3  # dot products a thousand times smaller: other top-digit bins
    got, source = _evaluate(q, g, ids, metric="dot", block_rows=16)
    assert source.walks == 2
    assert_same_report(got, _want(q, g, ids, "dot", 16))
    # one block, the whole matrix: its bins are the matrix's, never mis-predicted
    got, source = _evaluate(q, g, ids, metric="dot", block_rows=96)
    assert source.walks == 1
    assert_same_report(got, _want(q, g, ids, "dot", 96))


def test_no_candidate_bins_walks_again(small_matmuls, monkeypatch):
    monkeypatch.setattr(order_stats, "MAX_CANDIDATE_BINS", 0)
    q, g, ids = _problem(5)
    got, source = _evaluate(q, g, ids, block_rows=16)
    assert source.walks == 2
    assert_same_report(got, _want(q, g, ids, block_rows=16))


def _histogram_walks(monkeypatch):
    """Count the refinement passes that walk the source (block_histogram calls)."""
    calls = []
    real = acc.block_histogram

    def counting(*a, **k):
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(acc, "block_histogram", counting)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("far", [1e-3, 0.5, 0.97])
def test_nan_scores_and_high_fars_from_the_first_walk(dtype, far, monkeypatch):
    """NaN scores take the minimum key, known only at the end: the counts of the first
    walk leave them out and add them where a walk would have counted them (FAR 0.97
    with 40% NaN: the threshold is the NaN key itself)."""
    S, M, args = evaluation_inputs(7, P=60, G=300, dtype=dtype, nan_frac=0.4)
    S = S.astype(dtype)
    # in-memory matrices walk again (a read); here they count as a costly source would
    monkeypatch.setattr(acc.TensorSource, "cheap_rewalk", False)
    calls = _histogram_walks(monkeypatch)
    for block_rows in (None, 7):
        got = metrics.evaluate(S, M, *args, fars=[1e-2, far], block_rows=block_rows)
        # One block (the whole matrix): its bins are exact. 32-bit keys: the digit below
        # the top is counted in the first walk (at FAR 0.97, under the NaN key's bin);
        # 64-bit keys (four digits) walk for the two digits below that one only. Blocks
        # of 7 rows (2% of the pairs each) may mis-predict: a walk, the same bits
        if block_rows is None:
            assert set(calls) == (set() if dtype == np.float32 else {16, 0}), calls
        calls.clear()
        monkeypatch.setattr(order_stats, "MAX_CANDIDATE_BINS", 0)
        want = metrics.evaluate(S, M, *args, fars=[1e-2, far], block_rows=block_rows)
        monkeypatch.setattr(order_stats, "MAX_CANDIDATE_BINS", 48)
        assert calls, "the comparison must walk"
        calls.clear()
        assert_same_report(got, want)
    ref = tar_at_far_ref(S, args[0], args[3], fars=[1e-2, far])
    res = metrics.tar_at_far(S, args[0], args[3], fars=[1e-2, far])
    np.testing.assert_array_equal(res.tar, ref["tar"])
    np.testing.assert_array_equal(res.threshold, ref["threshold"])


def test_in_memory_matrices_walk_again(monkeypatch):
    """A TensorSource's second walk is a read of what is in memory: no candidate bins."""
    S, M, args = evaluation_inputs(8, P=30, G=200)
    calls = _histogram_walks(monkeypatch)
    metrics.evaluate(S, M, *args)
    assert set(calls) == {0}


def test_candidate_memory_is_bounded():
    """At most MAX_CANDIDATE_BINS rows of 2**16 counts, whatever the FARs asked."""
    rng = np.random.default_rng(0)
    S = torch.from_numpy(rng.standard_normal((50, 400)).astype(np.float32))
    bins = order_stats.CandidateBins(32, list(np.geomspace(1e-4, 0.5, 200)), S.numel(), 0)
    bins.add(S, order_stats.KeyStats.of(S), np.zeros(0))
    assert 0 < len(bins.prefixes) <= order_stats.MAX_CANDIDATE_BINS
    assert bins.rows.shape == (len(bins.prefixes), 1 << 16)
    assert 0 not in bins.prefixes  # the NaN key's bin on the first pass
