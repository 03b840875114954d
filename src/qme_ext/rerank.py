"""Re-ranking of score matrices: k-reciprocal re-ranking and average query expansion.

* :func:`k_reciprocal` -- Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification
  with k-reciprocal Encoding", CVPR 2017, with the published defaults k1 = 20, k2 = 6,
  lambda = 0.3. It needs the probe x gallery, probe x probe and gallery x gallery
  similarities.
* :func:`average_query_expansion` -- average query expansion (Chum, Philbin, Sivic,
  Isard, Zisserman, ICCV 2007), optionally alpha-weighted (alpha-QE, Radenovic et al.,
  TPAMI 2018), on the probe x gallery and gallery x gallery similarities.

Similarities and the paper's distances. The published algorithm takes Euclidean
distances and squares them. The package's scores are similarities; read as cosine
similarities s of L2-normalised embeddings, the squared Euclidean distance is
``d^2 = 2 - 2 s`` (clamped at 0 against rounding), and that is where this module starts.
Row i of the (P+G) x (P+G) distance matrix is then divided by its maximum (the
published per-row normalisation), so any positive scaling of the scores gives the same
result. The re-ranked output is returned as a similarity: ``-(final distance)``, so
higher is still better and ``qme_ext.metrics`` ranks it unchanged.

Memory. The published implementation builds several dense (P+G)^2 matrices (the
distances, their full argsort, the encodings V, the Jaccard distances). Here only the
top-(k1+1) neighbour lists (``qme_ext.topk`` over blocks of rows), the sparse encodings
(at most (k1+1)(round(k1/2)+2) entries a row) and their inverted lists are kept:
O((P+G) k) memory beyond the inputs and the (P, G) output. The Jaccard accumulation runs
in the ``qme_ext::rerank_jaccard`` kernel (CPU and CUDA twins). The result equals the
literal dense algorithm (``qme_ext.reference.rerank``) to float64 rounding: the
neighbour lists and supports are identical (stable ties to the lower index), only the
order of a few float64 sums differs.
"""
from __future__ import annotations

import numpy as np
import torch

from .ops.inputs import as_count, as_score_matrix
from .ops.rerank import rerank_jaccard
from .top_k import topk

__all__ = ["k_reciprocal", "average_query_expansion"]

_BLOCK_ELEMENTS = 1 << 20  # float64 elements of one transient block of distance rows


def _matrix(x, name: str, shape: tuple, device) -> torch.Tensor:
    """The input as a tensor in its own dtype (blocks are widened to float64 when read,
    so a (G, G) float32 input is never copied whole)."""
    t = as_score_matrix(x, name).detach()
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: must be on the device of scores ({device}), got {t.device}")
    step = max(1, _BLOCK_ELEMENTS // max(1, shape[1]))
    for a in range(0, shape[0], step):
        if not bool(torch.isfinite(t[a:a + step]).all()):
            raise ValueError(f"{name}: re-ranking needs finite scores (NaN or inf found)")
    return t


def _squared_distance(s: torch.Tensor) -> torch.Tensor:
    # (..) cosine similarities, any float dtype -> float64 squared Euclidean distances of
    # unit vectors (widening is exact, so the result is that of the float64 inputs)
    return (2.0 - 2.0 * s.to(torch.float64)).clamp_min(0.0)


class _Distances:
    """Rows of the normalised (P+G) x (P+G) distance matrix of the paper, built on demand.

    Row i is column i of the joint similarity matrix [[qq, qg], [qg^T, gg]] turned into
    squared distances and divided by that column's maximum (the published code
    normalises columns, then transposes)."""

    def __init__(self, qg, qq, gg):
        self.qg, self.qq, self.gg = qg, qq, gg
        self.P, self.G = qg.shape
        self.N = self.P + self.G
        self.colmax = torch.empty(self.N, dtype=torch.float64, device=qg.device)

    def joint_column_block(self, a: int, b: int) -> torch.Tensor:
        """(b - a, N): columns a..b-1 of the joint similarity matrix, as rows."""
        P = self.P
        parts = []
        if a < P:
            e = min(b, P)
            parts.append(torch.cat([self.qq[:, a:e].T, self.qg[a:e, :]], dim=1))
        if b > P:
            s = max(a, P) - P
            parts.append(torch.cat([self.qg[:, s:b - P].T, self.gg[:, s:b - P].T], dim=1))
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def rows(self, a: int, b: int) -> torch.Tensor:
        """(b - a, N) normalised distances; records the rows' normalisers."""
        d2 = _squared_distance(self.joint_column_block(a, b))
        m = d2.max(dim=1).values
        m = torch.where(m > 0, m, torch.ones_like(m))  # an all-identical column: no NaN
        self.colmax[a:b] = m
        return d2 / m[:, None]

    def at(self, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Normalised distance of row i to column x (same-shape int64 index tensors)."""
        P = self.P
        iq, xq = i < P, x < P
        ic, xc = i.clamp(max=P - 1), x.clamp(max=P - 1)
        ig, xg = (i - P).clamp(min=0), (x - P).clamp(min=0)
        s = torch.where(iq & xq, self.qq[xc, ic],
                        torch.where(iq, self.qg[ic, xg],
                                    torch.where(xq, self.qg[xc, ig], self.gg[xg, ig])))
        return _squared_distance(s) / self.colmax[i]


def _reciprocal_mask(fwd: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """(N, k+1) bool: neighbour a of row i is k-reciprocal (i is among its k+1 nearest)."""
    N = fwd.shape[0]
    head = fwd[:, :k + 1]
    out = torch.empty(head.shape, dtype=torch.bool, device=fwd.device)
    for a in range(0, N, block):
        b = min(N, a + block)
        rows = torch.arange(a, b, device=fwd.device)
        out[a:b] = (head[head[a:b]] == rows[:, None, None]).any(dim=-1)
    return out


def _expansion_sets(fwd, recip, k_half: int, recip_half, block: int):
    """Sorted, duplicate-free expansion set of every row as a padded (N, L) int64 tensor
    (padding = N) : the k-reciprocal set R(i) plus the half-size reciprocal set R'(c) of
    every c in R(i) that shares more than 2/3 of R'(c) with R(i)."""
    N, K = fwd.shape
    half = fwd[:, :k_half + 1]
    pad = torch.full((), N, dtype=torch.int64, device=fwd.device)
    out = []
    for a in range(0, N, block):
        b = min(N, a + block)
        R = torch.where(recip[a:b], fwd[a:b], pad)  # (n, K)
        cand = fwd[a:b]  # (n, K)
        Rh = torch.where(recip_half[cand], half[cand], pad)  # (n, K, kh+1)
        size = recip_half[cand].sum(-1)
        inR = (Rh[..., None] == R[:, None, None, :]).any(-1) & (Rh != N)
        keep = recip[a:b] & (inR.sum(-1).double() > (2.0 / 3.0) * size.double())
        extra = torch.where(keep[..., None], Rh, pad).reshape(b - a, -1)
        allc = torch.cat([R, extra], dim=1).sort(dim=1).values
        dup = torch.zeros_like(allc, dtype=torch.bool)
        dup[:, 1:] = allc[:, 1:] == allc[:, :-1]
        out.append(torch.where(dup, pad, allc).sort(dim=1).values)
    width = max(t.shape[1] for t in out)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=N)
                      for t in out])


def _csr_from_padded(cols: torch.Tensor, vals: torch.Tensor, N: int):
    """Padded (R, L) columns (pad = N) and values -> (offsets (R+1,), cols, vals)."""
    valid = cols != N
    counts = valid.sum(1)
    offsets = torch.zeros(cols.shape[0] + 1, dtype=torch.int64, device=cols.device)
    offsets[1:] = counts.cumsum(0)
    return offsets, cols[valid], vals[valid]


def _query_expand(offsets, cols, vals, neighbours: torch.Tensor, N: int):
    """V_qe[i] = mean of V over rows neighbours[i] (neighbours: (R, k2) int64), as CSR
    (columns ascending), built for blocks of rows so that the (rows, k2, entries)
    temporaries stay bounded."""
    R, k2 = neighbours.shape
    widest = int((offsets[1:] - offsets[:-1]).max()) if R else 0
    step = max(1, _BLOCK_ELEMENTS // max(1, 8 * k2 * widest))
    parts = [_query_expand_rows(offsets, cols, vals, neighbours[a:a + step], N)
             for a in range(0, R, step)]
    if len(parts) == 1:
        return parts[0]
    new_offsets = [parts[0][0]]
    for p in parts[1:]:
        new_offsets.append(p[0][1:] + new_offsets[-1][-1])
    return (torch.cat(new_offsets), torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]))


def _query_expand_rows(offsets, cols, vals, neighbours: torch.Tensor, N: int):
    """:func:`_query_expand` of one block of rows; the sum runs in neighbour order, as
    the dense mean does."""
    R, k2 = neighbours.shape
    lens = offsets[1:] - offsets[:-1]
    nb = neighbours.reshape(-1)
    nlen = lens[nb]
    total = int(nlen.sum())
    owner = torch.repeat_interleave(torch.arange(R, device=cols.device).repeat_interleave(k2),
                                    nlen)
    start = torch.repeat_interleave(offsets[nb], nlen)
    first = torch.zeros(nb.shape[0], dtype=torch.int64, device=cols.device)
    first[1:] = nlen.cumsum(0)[:-1]
    pos = start + torch.arange(total, device=cols.device) - torch.repeat_interleave(first, nlen)
    key = owner * (N + 1) + cols[pos]
    order = torch.sort(key, stable=True).indices  # stable: neighbour order kept per key
    key, v = key[order], vals[pos][order]
    ukey, inverse, runs = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    # each key has at most k2 terms: lay them out as (keys, k2) and add the columns in
    # neighbour order (deterministic on every device, unlike an atomic index_add_)
    run_start = torch.zeros_like(runs)
    run_start[1:] = runs.cumsum(0)[:-1]
    terms = torch.zeros((ukey.shape[0], k2), dtype=torch.float64, device=cols.device)
    terms[inverse, torch.arange(total, device=cols.device) - run_start[inverse]] = v
    summed = terms[:, 0].clone()
    for j in range(1, k2):
        summed += terms[:, j]  # + 0.0 where a neighbour lacks the column: exact
    row = ukey // (N + 1)
    new_offsets = torch.zeros(R + 1, dtype=torch.int64, device=cols.device)
    new_offsets[1:] = torch.bincount(row, minlength=R).cumsum(0)
    return new_offsets, ukey % (N + 1), summed / k2


def _inverted_lists(offsets, cols, vals, first_row: int, N: int):
    """Inverted lists (column -> rows >= first_row, ascending) of a CSR matrix, with the
    rows renumbered from first_row."""
    R = offsets.shape[0] - 1
    rows = torch.repeat_interleave(torch.arange(R, device=cols.device), offsets[1:] - offsets[:-1])
    sel = rows >= first_row
    r, c, v = rows[sel] - first_row, cols[sel], vals[sel]
    order = torch.sort(c * (R + 1) + r).indices
    inv_offsets = torch.zeros(N + 1, dtype=torch.int64, device=cols.device)
    inv_offsets[1:] = torch.bincount(c, minlength=N).cumsum(0)
    return inv_offsets, r[order], v[order]


def k_reciprocal(scores, probe_scores, gallery_scores, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3):
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of a score matrix.

    Parameters
    ----------
    scores : (P, G) probe x gallery similarities (numpy or torch, CPU or CUDA, any float
        dtype), read as cosine similarities (see the module docstring).
    probe_scores : (P, P) probe x probe similarities, same kind and device.
    gallery_scores : (G, G) gallery x gallery similarities.
    k1 : neighbours of the k-reciprocal sets (published 20); 1 <= k1 < P + G.
    k2 : neighbours of the local query expansion (published 6; 1 switches it off);
        1 <= k2 <= k1 + 1.
    lambda_value : weight of the original distance in the final distance (published
        0.3); in [0, 1].

    Returns
    -------
    (P, G) float64 re-ranked similarities ``-(final distance)``, with
    ``final = (1 - lambda) * Jaccard + lambda * normalised original distance``: numpy
    for numpy input, else a tensor on the input's device. Scores must be finite.
    """
    is_numpy = isinstance(scores, np.ndarray)
    qg0 = as_score_matrix(scores, "scores")
    P, G = qg0.shape
    dev = qg0.device
    qg = _matrix(scores, "scores", (P, G), dev)
    qq = _matrix(probe_scores, "probe_scores", (P, P), dev)
    gg = _matrix(gallery_scores, "gallery_scores", (G, G), dev)
    N = P + G
    k1 = as_count(k1, "k1")
    k2 = as_count(k2, "k2")
    if k1 >= N:
        raise ValueError(f"k1: expected k1 < P + G = {N}, got {k1}")
    if k2 > k1 + 1:
        raise ValueError(f"k2: expected k2 <= k1 + 1 = {k1 + 1}, got {k2}")
    lam = _real(lambda_value, "lambda_value")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda_value: expected a number in [0, 1], got {lambda_value!r}")

    dist = _Distances(qg, qq, gg)
    block = max(1, _BLOCK_ELEMENTS // N)
    fwd = torch.empty((N, k1 + 1), dtype=torch.int64, device=dev)
    for a in range(0, N, block):
        b = min(N, a + block)
        fwd[a:b] = topk(dist.rows(a, b), k1 + 1, largest=False).indices
    k_half = int(round(k1 / 2.0))  # round half to even, as numpy.around
    small = max(1, (1 << 22) // ((k1 + 1) ** 2 * (k_half + 1)))
    recip = _reciprocal_mask(fwd, k1, small)
    recip_half = _reciprocal_mask(fwd, k_half, small)
    expansion = _expansion_sets(fwd, recip, k_half, recip_half, small)

    # V rows: exp(-d) over the expansion set, normalised to sum 1 (blocks of rows bound
    # the index temporaries of _Distances.at)
    w = torch.zeros(expansion.shape, dtype=torch.float64, device=dev)
    step = max(1, _BLOCK_ELEMENTS // expansion.shape[1])
    for a in range(0, N, step):
        b = min(N, a + step)
        e = expansion[a:b]
        rows = torch.arange(a, b, device=dev)[:, None].expand_as(e)
        w[a:b] = torch.where(e != N, torch.exp(-dist.at(rows, e.clamp(max=N - 1))), 0.0)
    w /= w.sum(dim=1, keepdim=True)
    offsets, cols, vals = _csr_from_padded(expansion, w, N)
    if k2 != 1:
        offsets, cols, vals = _query_expand(offsets, cols, vals, fwd[:, :k2], N)

    inv_offsets, inv_rows, inv_vals = _inverted_lists(offsets, cols, vals, P, N)
    pend = int(offsets[P])
    temp_min = rerank_jaccard(offsets[:P + 1].contiguous(), cols[:pend], vals[:pend],
                              inv_offsets, inv_rows, inv_vals, G)
    # final = (1 - lam) * (1 - t / (2 - t)) + lam * original, formed in the (P, G) buffer of
    # the Jaccard sums, a block of rows at a time: that buffer is the only one of output size
    out = temp_min
    step = max(1, _BLOCK_ELEMENTS // G)
    for a in range(0, P, step):
        b = min(P, a + step)
        t = out[a:b]
        j = torch.sub(2.0, t)
        torch.div(t, j, out=j)
        j.neg_().add_(1.0).mul_(1.0 - lam)
        j.add_(_squared_distance(qg[a:b]).div_(dist.colmax[a:b, None]).mul_(lam))
        t.copy_(j.neg_())
    return out.cpu().numpy() if is_numpy else out


def _real(x, name: str) -> float:
    """``x`` as a float if it is a real number (not a bool), else a TypeError naming it."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer,
                                                             np.floating)):
        raise TypeError(f"{name}: expected a real number, got {x!r}")
    return float(x)


def average_query_expansion(scores, gallery_scores, k: int = 10, alpha: float = 0.0):
    """Average query expansion on a score matrix.

    Each probe is replaced by the weighted mean of itself (weight 1) and its top-k
    gallery entries (weight ``max(s, 0) ** alpha``; alpha = 0, the default, is plain
    AQE), and the scores are those of the mean with the gallery. On similarities that
    are dot products of embeddings this is exact without the embeddings:
    ``s'(q, .) = (s(q, .) + sum_j w_j gallery_scores[g_j, .]) / (1 + sum_j w_j)``
    (the mean is not re-normalised: that scales each row by a constant and leaves its
    ranking unchanged). Only the probes are expanded (no database-side augmentation).

    Parameters
    ----------
    scores : (P, G) probe x gallery similarities (numpy or torch, CPU or CUDA).
    gallery_scores : (G, G) gallery x gallery similarities, same device.
    k : expansion neighbours, 1 <= k <= min(G, 2048) (top-k by ``qme_ext.topk``).
    alpha : weight exponent >= 0.

    Returns
    -------
    (P, G) float64 expanded similarities (numpy for numpy input, else a tensor on the
    input's device). Memory beyond the output: O(P k) plus one block of rows.
    """
    is_numpy = isinstance(scores, np.ndarray)
    qg0 = as_score_matrix(scores, "scores")
    P, G = qg0.shape
    qg = _matrix(scores, "scores", (P, G), qg0.device)
    gg = _matrix(gallery_scores, "gallery_scores", (G, G), qg0.device)
    k = as_count(k, "k")
    alpha = _real(alpha, "alpha")
    if not 0.0 <= alpha < float("inf"):
        raise ValueError(f"alpha: expected a finite number >= 0, got {alpha!r}")
    vals, idx = topk(qg, k)
    w = vals.to(torch.float64).clamp_min(0.0) ** alpha  # (P, k); 0 ** 0 = 1
    self_w = torch.ones((P, 1), dtype=torch.float64, device=qg.device)
    if not bool(torch.isfinite(w).all()):
        # a huge alpha overflows s ** alpha: the same weights divided by the row's largest
        # (1 for the probe itself included), in logs, so that the mean stays finite
        logw = alpha * torch.log(vals.to(torch.float64).clamp_min(0.0))
        top = logw.amax(dim=1, keepdim=True).clamp_min(0.0)
        w, self_w = torch.exp(logw - top), torch.exp(-top)
    out = torch.empty(qg.shape, dtype=torch.float64, device=qg.device)
    block = max(1, _BLOCK_ELEMENTS // (k * G))
    for a in range(0, P, block):
        b = min(P, a + block)
        neighbours = (w[a:b, :, None] * gg[idx[a:b]].to(torch.float64)).sum(dim=1)
        out[a:b] = ((self_w[a:b] * qg[a:b].to(torch.float64) + neighbours)
                    / (self_w[a:b] + w[a:b].sum(dim=1, keepdim=True)))
    return out.cpu().numpy() if is_numpy else out
