"""Reference re-ranking: the published dense algorithms, written literally from their
definitions (the test oracle of ``qme_ext.rerank``).

* k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification
  with k-reciprocal Encoding", CVPR 2017): every (P+G) x (P+G) matrix of the published
  algorithm is built densely here (distances, the argsort of every row, the V encodings,
  the query-expanded V, the Jaccard distances).
* average query expansion (Chum et al., ICCV 2007) on score matrices.

Similarities map to the paper's distances as in ``qme_ext.rerank``: the published
algorithm squares its Euclidean input distances; for L2-normalised embeddings with
cosine similarity s the squared distance is ``2 - 2 s`` (clamped at 0), which is what
this module starts from. Everything is float64; argsorts are stable (ties to the lower
index, the package's order).
"""
from __future__ import annotations

import numpy as np


def _np64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def k_reciprocal_ref(qg, qq, gg, k1: int = 20, k2: int = 6, lambda_value: float = 0.3):
    """Re-ranked scores (P, G) float64 numpy = -(final distance) of the dense algorithm.

    qg (P, G), qq (P, P), gg (G, G): cosine similarities (higher = more alike).
    """
    qg, qq, gg = _np64(qg), _np64(qq), _np64(gg)
    P, G = qg.shape
    N = P + G
    sim = np.concatenate([np.concatenate([qq, qg], axis=1),
                          np.concatenate([qg.T, gg], axis=1)], axis=0)
    d2 = np.maximum(2.0 - 2.0 * sim, 0.0)  # squared Euclidean distance of unit vectors
    colmax = d2.max(axis=0)
    colmax = np.where(colmax > 0, colmax, 1.0)  # an all-identical column: no NaN
    original_dist = np.transpose(d2 / colmax)  # row i normalised by column i's maximum
    initial_rank = np.argsort(original_dist, axis=1, kind="stable")
    V = np.zeros((N, N), dtype=np.float64)
    kh = int(np.around(k1 / 2.0))

    def reciprocal(i, k):
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    for i in range(N):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            rc = reciprocal(c, kh)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-original_dist[i, expansion])
        V[i, expansion] = w / np.sum(w)
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(N):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    jaccard = np.zeros((P, N), dtype=np.float64)
    for i in range(P):
        temp_min = np.zeros(N, dtype=np.float64)
        for k in np.where(V[i, :] != 0)[0]:
            rows = np.where(V[:, k] != 0)[0]
            temp_min[rows] += np.minimum(V[i, k], V[rows, k])
        jaccard[i] = 1.0 - temp_min / (2.0 - temp_min)
    final = jaccard * (1.0 - lambda_value) + original_dist[:P] * lambda_value
    return -final[:, P:]


def average_query_expansion_ref(qg, gg, k: int = 10, alpha: float = 0.0):
    """AQE scores (P, G) float64 numpy: each query replaced by the weighted mean of itself
    (weight 1) and its top-k gallery entries (weight max(s, 0)**alpha), as a dot product:
    s'(q, .) = (s(q, .) + sum_j w_j gg[g_j, .]) / (1 + sum_j w_j)."""
    qg, gg = _np64(qg), _np64(gg)
    P, G = qg.shape
    W = np.zeros((P, G), dtype=np.float64)
    for p in range(P):
        top = np.argsort(-qg[p], kind="stable")[:k]
        W[p, top] = np.maximum(qg[p, top], 0.0) ** alpha
    return (qg + W @ gg) / (1.0 + W.sum(axis=1, keepdims=True))
