"""qme_ext.rerank against the literal dense algorithms of qme_ext.reference.rerank, and the
qme_ext::rerank_jaccard op against a dense loop."""
import numpy as np
import pytest
import torch
from conftest import requires_cuda

from qme_ext import rerank
from qme_ext.ops.rerank import rerank_jaccard
from qme_ext.reference.rerank import average_query_expansion_ref, k_reciprocal_ref


def embeddings(seed, P, G, n_ids, dim=8, noise=0.6, quantise=None):
    """Cosine similarity matrices (qg, qq, gg) of clustered unit embeddings; `quantise`
    rounds the features so that many scores tie."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    q = centres[rng.integers(0, n_ids, P)] + noise * rng.normal(size=(P, dim))
    g = centres[rng.integers(0, n_ids, G)] + noise * rng.normal(size=(G, dim))
    if quantise:
        q, g = np.round(q * quantise) / quantise, np.round(g * quantise) / quantise
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return q @ g.T, q @ q.T, g @ g.T


CASES = [  # (seed, P, G, n_ids, k1, k2, lambda, quantise)
    (0, 12, 30, 5, 20, 6, 0.3, None),  # published defaults
    (1, 7, 25, 4, 5, 3, 0.3, None),
    (2, 10, 40, 6, 8, 1, 0.5, None),  # no query expansion
    (3, 9, 21, 3, 6, 7, 0.0, 2),  # k2 = k1 + 1, ties from quantised features
    (4, 5, 9, 2, 13, 6, 1.0, 1),  # k1 = P + G - 1, many ties
]


@pytest.mark.parametrize("case", CASES)
def test_k_reciprocal_equals_dense_reference(case, device):
    seed, P, G, n, k1, k2, lam, quant = case
    qg, qq, gg = embeddings(seed, P, G, n, quantise=quant)
    want = k_reciprocal_ref(qg, qq, gg, k1, k2, lam)
    t = [torch.from_numpy(x).to(device) for x in (qg, qq, gg)]
    got = rerank.k_reciprocal(*t, k1=k1, k2=k2, lambda_value=lam)
    assert got.device.type == device and got.dtype == torch.float64 and got.shape == (P, G)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-12)
    # the rankings are those of the reference (ties by lower index)
    order = np.argsort(-want, axis=1, kind="stable")
    assert (np.argsort(-got.cpu().numpy(), axis=1, kind="stable") == order).all()


def test_k_reciprocal_numpy_float32_and_scale_free():
    qg, qq, gg = embeddings(5, 8, 20, 4)
    got = rerank.k_reciprocal(qg.astype(np.float32), qq.astype(np.float32),
                              gg.astype(np.float32), k1=6, k2=3)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    want = k_reciprocal_ref(qg.astype(np.float32), qq.astype(np.float32),
                            gg.astype(np.float32), 6, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # the re-ranking is not the identity: it changes the order of some rows
    assert (np.argsort(-got, 1, kind="stable") != np.argsort(-qg, 1, kind="stable")).any()


def test_k_reciprocal_helps_on_clustered_data():
    """On clustered embeddings, re-ranking lifts the mean AP computed from pids (a sanity
    check of the direction, not only of the agreement with the oracle)."""
    rng = np.random.default_rng(7)
    ids = 6
    centres = rng.normal(size=(ids, 16))
    qp, gp = rng.integers(0, ids, 20), rng.integers(0, ids, 80)
    q = centres[qp] + 1.0 * rng.normal(size=(20, 16))
    g = centres[gp] + 1.0 * rng.normal(size=(80, 16))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)

    def mean_ap(s):
        aps = []
        for p in range(s.shape[0]):
            good = gp[np.argsort(-s[p], kind="stable")] == qp[p]
            hits = np.cumsum(good)
            aps.append((hits[good] / (np.flatnonzero(good) + 1)).mean())
        return float(np.mean(aps))

    before = mean_ap(q @ g.T)
    after = mean_ap(rerank.k_reciprocal(q @ g.T, q @ q.T, g @ g.T, k1=10, k2=4))
    assert after > before


@pytest.mark.parametrize("k,alpha", [(1, 0.0), (5, 0.0), (10, 3.0)])
def test_average_query_expansion_equals_reference(device, k, alpha):
    qg, _, gg = embeddings(8, 11, 30, 5)
    got = rerank.average_query_expansion(torch.from_numpy(qg).to(device),
                                         torch.from_numpy(gg).to(device), k=k, alpha=alpha)
    assert got.device.type == device
    want = average_query_expansion_ref(qg, gg, k, alpha)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-12)


def test_average_query_expansion_of_features():
    """On dot-product scores AQE equals scoring the averaged query features."""
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(4, 6)), rng.normal(size=(15, 6))
    got = rerank.average_query_expansion(q @ g.T, g @ g.T, k=3)
    top = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :3]
    qe = (q + g[top].sum(1)) / 4
    np.testing.assert_allclose(got, qe @ g.T, rtol=0, atol=1e-12)


def sparse_lists(V, P, device="cpu"):
    """The op's arguments for a dense (N, N) V: CSR of the probe rows V[:P], inverted
    lists of the gallery rows V[P:] (columns ascending, rows ascending)."""
    N = V.shape[0]
    rows, cols = np.nonzero(V[:P])
    po = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=P))])
    gc, gr = np.nonzero(V[P:].T)
    io = np.concatenate([[0], np.cumsum(np.bincount(gc, minlength=N))])
    return [torch.as_tensor(x, device=device)
            for x in (po, cols, V[:P][rows, cols], io, gr, V[P:][gr, gc])]


def test_rerank_jaccard_op_matches_dense_loop(device):
    rng = np.random.default_rng(0)
    P, G = 4, 6
    N = P + G
    V = np.where(rng.random((N, N)) < 0.4, rng.random((N, N)), 0.0)
    want = np.array([[np.minimum(V[p], V[P + g]).sum() for g in range(G)] for p in range(P)])
    args = sparse_lists(V, P, device)
    out = rerank_jaccard(*args, G)
    np.testing.assert_allclose(out.cpu().numpy(), want, rtol=0, atol=1e-15)
    if device == "cpu":
        torch.library.opcheck(torch.ops.qme_ext.rerank_jaccard, (*args, G))
    bad = list(args)
    bad[4] = bad[4] + G  # a gallery row out of range
    with pytest.raises(ValueError, match="inv_rows"):
        rerank_jaccard(*bad, G)


def test_bad_arguments_raise():
    qg, qq, gg = embeddings(0, 4, 6, 2)
    with pytest.raises(ValueError, match="probe_scores"):
        rerank.k_reciprocal(qg, gg, gg)
    with pytest.raises(ValueError, match="k1"):
        rerank.k_reciprocal(qg, qq, gg, k1=10)
    with pytest.raises(ValueError, match="k2"):
        rerank.k_reciprocal(qg, qq, gg, k1=3, k2=5)
    with pytest.raises(ValueError, match="lambda_value"):
        rerank.k_reciprocal(qg, qq, gg, k1=3, k2=2, lambda_value=1.5)
    bad = qg.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        rerank.k_reciprocal(bad, qq, gg, k1=3, k2=2)
    with pytest.raises(ValueError, match="gallery_scores"):
        rerank.average_query_expansion(qg, qq, k=2)
    with pytest.raises(ValueError, match="alpha"):
        rerank.average_query_expansion(qg, gg, k=2, alpha=-1)


def test_inputs_not_modified():
    qg, qq, gg = embeddings(1, 5, 8, 3)
    copies = [x.copy() for x in (qg, qq, gg)]
    rerank.k_reciprocal(qg, qq, gg, k1=4, k2=2)
    rerank.average_query_expansion(qg, gg, k=3)
    for a, b in zip((qg, qq, gg), copies):
        assert (a == b).all()


def test_rerank_jaccard_op_zero_size():
    z = torch.zeros(1, dtype=torch.int64)
    e = torch.zeros(0, dtype=torch.int64)
    out = rerank_jaccard(z, e, e.double(), torch.zeros(4, dtype=torch.int64), e, e.double(), 5)
    assert out.shape == (0, 5)
    out = rerank_jaccard(torch.zeros(3, dtype=torch.int64), e, e.double(), z, e, e.double(), 0)
    assert out.shape == (2, 0)


@requires_cuda
def test_cuda_twin_matches_the_cpu():
    """The kernel twins add in the same order: bitwise equal on the same lists. The whole
    re-ranking also uses torch's exp and reductions, which may differ in the last bit
    between devices: equal to 1e-12 there."""
    qg, qq, gg = embeddings(11, 30, 90, 8)
    cpu = rerank.k_reciprocal(*(torch.from_numpy(x) for x in (qg, qq, gg)))
    cuda = rerank.k_reciprocal(*(torch.from_numpy(x).cuda() for x in (qg, qq, gg)))
    np.testing.assert_allclose(cuda.cpu().numpy(), cpu.numpy(), rtol=0, atol=1e-12)
    rng = np.random.default_rng(1)
    P, G = 6, 40
    N = P + G
    V = np.where(rng.random((N, N)) < 0.3, rng.random((N, N)), 0.0)
    args = sparse_lists(V, P)
    on_cpu = rerank_jaccard(*args, G)
    on_cuda = rerank_jaccard(*(t.cuda() for t in args), G)
    assert torch.equal(on_cuda.cpu(), on_cpu)


def test_small_blocks_give_the_same_result(monkeypatch):
    """Every blockwise loop (distance rows, V rows, query expansion, the final distance)
    run with many tiny blocks equals the one-block result bit for bit."""
    qg, qq, gg = embeddings(12, 9, 31, 4)
    t = [torch.from_numpy(x) for x in (qg, qq, gg)]
    whole = rerank.k_reciprocal(*t, k1=7, k2=4)
    whole_aqe = rerank.average_query_expansion(t[0], t[2], k=5)
    monkeypatch.setattr(rerank, "_BLOCK_ELEMENTS", 64)
    assert torch.equal(rerank.k_reciprocal(*t, k1=7, k2=4), whole)
    assert torch.equal(rerank.average_query_expansion(t[0], t[2], k=5), whole_aqe)
    np.testing.assert_allclose(whole.numpy(), k_reciprocal_ref(qg, qq, gg, 7, 4), rtol=0,
                               atol=1e-12)
