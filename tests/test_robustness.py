"""Robustness of every public op: inputs never mutated, results bitwise identical across
repeated runs and CPU thread counts, concurrent calls from Python threads safe (the
kernels release the GIL), and P*G > 2**31 scores on the GPU against an independent
chunked computation (skipped without a GPU or without the memory).

No timing is asserted anywhere: the GIL demonstration only records a count.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import qme_ext
from conftest import requires_cuda
from layouts import present, same_bits
from qme_ext.ops import evaluation as _ops, qme as _ops_qme, quality as _ops_quality
from qme_ext import fusion, metrics
from qme_ext.io import ScoreSet
from qme_ext.qme.modules import QME
from qme_ext.quality import (ProgressiveAggregator, QMagFace, aggregate_templates,
                             qmagface_template, qwfa, qwfaf)


@pytest.fixture
def threads():
    """set_num_threads for the test, restored afterwards."""
    before = qme_ext.get_num_threads()
    yield qme_ext.set_num_threads
    qme_ext.set_num_threads(before)


def problem(seed=0, P=40, G=300, n_sub=12, specials=True):
    """A score file's contents with ties, NaN, +-inf and -0.0 in both matrices."""
    rng = np.random.default_rng(seed)
    subjects = np.arange(100, 100 + n_sub)
    g = rng.choice(subjects, G)
    q = np.where(rng.random(P) < 0.2, 7, rng.choice(subjects, P))
    S = np.round(rng.normal(size=(P, G)) * 8) / 8 + 1.5 * (q[:, None] == g[None, :])
    M = np.round(rng.normal(size=(P, n_sub)) * 8) / 8 + 1.5 * (q[:, None] == subjects[None, :])
    if specials:
        for A in (S, M):
            hit = rng.random(A.shape) < 0.03
            A[hit] = rng.choice([np.nan, np.inf, -np.inf, -0.0], int(hit.sum()))
    return dict(score_mat=S, merge_score_mat=M, q_pids=q, q_camids=rng.integers(0, 3, P),
                q_clothes_ids=rng.integers(0, 2, P), g_pids=g, g_camids=rng.integers(0, 3, G),
                g_clothes_ids=rng.integers(0, 2, G), unique_g_pids=subjects)


# ---------------------------------------------------------------------------
# inputs are never mutated
# ---------------------------------------------------------------------------
def _root(x):
    """The buffer a view looks into (so writes outside the view are caught too)."""
    if isinstance(x, torch.Tensor):
        return x._base if x._base is not None else x
    while isinstance(x, np.ndarray) and isinstance(x.base, np.ndarray):
        x = x.base
    return x


def _arrays(obj):
    """Every array/tensor inside nested args (dicts, lists, tuples, ScoreSets)."""
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _arrays(v)
    elif isinstance(obj, ScoreSet):
        yield from _arrays(vars(obj))


def _wrap(d, container, layout):
    """Scores as (numpy | torch) in (contiguous | transposed | strided | negative) layout,
    ids as numpy or torch; float32 scores."""
    out = dict(d)
    for k in ("score_mat", "merge_score_mat"):
        out[k] = present(d[k], torch.float32, layout, container == "numpy").obj
    if container == "torch":
        out.update({k: torch.from_numpy(v.copy()) for k, v in d.items() if k not in
                    ("score_mat", "merge_score_mat")})
    return out


def _scoreset(d):
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return ScoreSet(models=["face", "body"],
                    score_mats={"face": f32(d["score_mat"]), "body": f32(d["score_mat"][:, ::-1])},
                    merge_score_mats={"face": f32(d["merge_score_mat"]),
                                      "body": f32(d["merge_score_mat"][:, ::-1])},
                    quality={"face_weights": np.linspace(0, 1, d["q_pids"].size,
                                                         dtype=np.float32)[:, None]},
                    **{k: np.asarray(d[k]) for k in ("q_pids", "q_camids", "q_clothes_ids",
                                                     "g_pids", "g_camids", "g_clothes_ids",
                                                     "unique_g_pids")})


def _metric_calls(d):
    S, M, q, g = d["score_mat"], d["merge_score_mat"], d["q_pids"], d["g_pids"]
    cams = (d["q_camids"], d["g_camids"], d["q_clothes_ids"], d["g_clothes_ids"])
    return {
        "rank_metrics": lambda: metrics.rank_metrics(S, q, g, *cams, mode="cc", per_probe=True),
        "cmc_curve": lambda: metrics.cmc_curve(S, q, g, *cams[:2]),
        "tar_at_far": lambda: metrics.tar_at_far(S, q, g, (1e-3, 0.1)),
        "tar_at_far_conservative": lambda: metrics.tar_at_far(S, q, g, (1e-3, 0.1),
                                                              convention="conservative"),
        "fnir_at_fpir": lambda: metrics.fnir_at_fpir(M, q, d["unique_g_pids"], rank=2),
        "roc": lambda: metrics.roc(S, q, g),
        "det": lambda: metrics.det(S, q, g),
        "eer": lambda: metrics.eer(S, q, g),
        "evaluate": lambda: metrics.evaluate(**d),
    }


def _fusion_calls(d):
    S, q, g = d["score_mat"], d["q_pids"], d["g_pids"]
    calls = {f"normaliser_{n}": (lambda n=n: fusion.get_normaliser(n).fit((S, q, g))
                                 .transform(S)) for n in ("zscore", "minmax", "tanh", "rhe")}
    calls["normaliser_self"] = lambda: fusion.get_normaliser("rhe").fit("self").transform(S, q, g)
    ss = _scoreset(d if isinstance(S, np.ndarray) else {k: np.asarray(v) for k, v in d.items()})
    d["_scoreset"] = ss  # checked for mutation with the rest
    for method in ("zscore", "minmax:max", "asym_ao", "weighted", "bssf", "farsight_style"):
        calls[f"fuse_{method}"] = lambda method=method: fusion.fuse(ss, method)
    return calls


@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided", "negative"])
@pytest.mark.parametrize("container", ["numpy", "torch"])
@pytest.mark.parametrize("family", ["metrics", "fusion"])
def test_score_apis_do_not_mutate_inputs(container, layout, family):
    d = _wrap(problem(1, P=24, G=60, n_sub=6), container, layout)
    calls = _metric_calls(d) if family == "metrics" else _fusion_calls(d)
    for name, call in calls.items():
        roots = [_root(a) for a in _arrays(d)]
        before = [r.detach().clone() if isinstance(r, torch.Tensor) else r.copy() for r in roots]
        call()
        for r, b in zip(roots, before):
            assert same_bits(r, b), f"{name} mutated an input ({container}, {layout})"


def _qme_inputs(device="cpu"):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.rand(s, generator=g, dtype=torch.float64).to(device)  # noqa: E731
    x = torch.randn(5, 3, 40, generator=g, dtype=torch.float64).to(device)
    x[0, 0, :3] = torch.tensor([float("nan"), float("inf"), -0.0])
    params = [r(2, 3) + 0.5, r(2, 3), r(2, 9, 3), r(2, 9), r(2, 9), r(2), r(5, 2)]
    return x, params


def _quality_calls(device="cpu"):
    g = torch.Generator().manual_seed(4)
    feats = (torch.randn(30, 8, generator=g) * 20).to(device)
    feats_t = feats.T.contiguous().T  # a transposed view
    gal = (torch.randn(20, 8, generator=g) * 20).to(device)
    w = torch.rand(30, generator=g).to(device)
    off = torch.tensor([0, 4, 4, 17, 30]).to(device)
    cos = (torch.rand(6, 7, generator=g) * 2 - 1).to(device).T.contiguous().T
    qp, qg = (torch.rand(6, dtype=torch.float64) * 30).to(device), (torch.rand(
        7, dtype=torch.float64) * 30).to(device)
    pairs = np.array([[i, (i * 7 + 3) % 30] for i in range(30)])
    labels = np.arange(30) % 3 == 0
    x, params = _qme_inputs(device)
    qme = QME(["a", "b", "c"], num_experts=2).to(device).double()
    qv = torch.rand(5, generator=g, dtype=torch.float64).to(device)
    grad = torch.randn(5, 40, generator=g, dtype=torch.float64).to(device)
    out = torch.zeros(6, 7, device=device)

    def progressive():
        agg = ProgressiveAggregator()
        for i in range(5):
            agg.update(feats[i], float(w[i]))
        return agg.template

    return {
        "qmagface_epilogue": ((cos, qp, qg), lambda: _ops_quality.qmagface_epilogue(
            cos, qp, qg, 0.07, 0.12, out)),
        "template_aggregate": ((feats_t, w, off), lambda: _ops_quality.template_aggregate(
            feats_t, w, off, True)),
        "score_matrix": ((feats_t, gal), lambda: QMagFace("magface-r100").score_matrix(
            feats_t, gal, block=(7, 6))),
        "score_pairs": ((feats, gal), lambda: QMagFace("magface-r50").score_pairs(
            feats[:20], gal)),
        "qmagface_fit": ((feats, pairs, labels), lambda: QMagFace().fit(
            feats.cpu(), pairs, labels, fmrs=[0.1, 0.3, 0.5], n_omega=5)),
        "aggregate_templates": ((feats_t, w, off), lambda: aggregate_templates(feats_t, w, off)),
        "qwfa_qwfaf": ((feats, w), lambda: (qwfa(feats, w), qwfaf(feats, w, 0.5))),
        "qmagface_template": ((feats,), lambda: qmagface_template(feats)),
        "progressive": ((feats, w), progressive),
        "expert_fuse": ((x, *params), lambda: _ops_qme.expert_fuse(x, *params, 0.2, 9)),
        "expert_fuse_bwd": ((grad, x, *params), lambda: _ops_qme.expert_fuse_bwd(
            grad, x, *params, 0.2, 9)),
        "qme_forward_backward": ((x, qv), lambda: qme(x, qv).sum().backward()),
    }


def test_tensor_ops_do_not_mutate_inputs(device):
    for name, (inputs, call) in _quality_calls(device).items():
        roots = [_root(a) for a in _arrays(list(inputs))]
        before = [r.detach().clone() if isinstance(r, torch.Tensor) else r.copy() for r in roots]
        call()
        for r, b in zip(roots, before):
            assert same_bits(r, b), f"{name} mutated an input"


# ---------------------------------------------------------------------------
# bitwise reproducibility: repeated runs and thread counts
# ---------------------------------------------------------------------------
def _flat(result):
    """Any result (dataclass, dict, tuple, tensor, array, float) -> list of numpy arrays."""
    if isinstance(result, torch.Tensor):
        t = result.detach().cpu()
        return [t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()]
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, (float, int, np.floating, np.integer)):
        return [np.asarray(result)]
    if isinstance(result, dict):
        return [np.asarray(list(result.values()), dtype=np.float64)]
    if isinstance(result, (list, tuple)):
        return [a for r in result for a in _flat(r)]
    if isinstance(result, ScoreSet):
        return [np.asarray(m) for m in result.score_mats.values()]
    return [a for v in vars(result).values() if v is not None and not isinstance(v, str)
            for a in _flat(v)]


def _big_calls():
    """Ops at sizes that split into several CPU threads (see the min-rows of each kernel)."""
    d = problem(5, P=256, G=3000, n_sub=60)
    x, params = _qme_inputs()
    g = torch.Generator().manual_seed(6)
    xb = torch.randn(4, 3, 20000, generator=g)
    pb = [p.float() for p in params[:-1]] + [torch.rand(4, 2, generator=g)]
    gb = torch.randn(4, 20000, generator=g)
    feats = torch.randn(20000, 16, generator=g, dtype=torch.float64)
    w = torch.rand(20000, generator=g, dtype=torch.float64)
    off = torch.cat([torch.tensor([0]), torch.sort(torch.randint(0, 20000, (1999,),
                                                                 generator=g)).values,
                     torch.tensor([20000])])
    cos = torch.rand(128, 1000, generator=g) * 2 - 1
    qp, qg = torch.rand(128, dtype=torch.float64) * 30, torch.rand(1000, dtype=torch.float64) * 30

    def epilogue(dtype):
        out = torch.empty(128, 1000, dtype=dtype)
        _ops_quality.qmagface_epilogue(cos, qp, qg, 0.07, 0.12, out)
        return out

    calls = _metric_calls(d)
    calls.update({
        "key_histogram": lambda: _ops.key_histogram(torch.from_numpy(d["score_mat"]).float(), 16,
                                                    16, torch.zeros(0, dtype=torch.int64), 32, 0),
        "expert_fuse": lambda: _ops_qme.expert_fuse(xb, *pb, 0.3, 4),
        "expert_fuse_bwd": lambda: _ops_qme.expert_fuse_bwd(gb, xb, *pb, 0.3, 4),
        "template_aggregate": lambda: _ops_quality.template_aggregate(feats, w, off, True),
        "qmagface_epilogue_f32": lambda: epilogue(torch.float32),
        "qmagface_epilogue_bf16": lambda: epilogue(torch.bfloat16),
        "fuse_bssf": lambda: fusion.fuse(_scoreset(d), "bssf"),
    })
    return calls


def test_bitwise_identical_across_runs_and_thread_counts(threads):
    for name, call in _big_calls().items():
        results = []
        for n in (1, 2, 4, 4):
            threads(n)
            results.append(_flat(call()))
        for other in results[1:]:
            assert len(other) == len(results[0])
            for a, b in zip(results[0], other):
                assert same_bits(np.ascontiguousarray(a), np.ascontiguousarray(b)), name


# ---------------------------------------------------------------------------
# concurrency: Python threads calling the kernels at once
# ---------------------------------------------------------------------------
def test_concurrent_evaluate_matches_serial(threads):
    threads(2)
    d = problem(8, P=400, G=20000, n_sub=200, specials=True)
    d["score_mat"] = d["score_mat"].astype(np.float32)
    serial = metrics.evaluate(**d)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: metrics.evaluate(**d), range(4)))
    for out in outs:
        assert same_bits(np.asarray(list(out.values())), np.asarray(list(serial.values())))


def test_concurrent_mixed_ops_match_serial():
    calls = _big_calls()
    names = ["evaluate", "tar_at_far", "expert_fuse", "expert_fuse_bwd", "template_aggregate",
             "rank_metrics", "qmagface_epilogue_f32"]
    serial = {n: _flat(calls[n]()) for n in names}
    with ThreadPoolExecutor(4) as pool:
        futures = {n: pool.submit(calls[n]) for n in names * 2}
        outs = {n: _flat(f.result()) for n, f in futures.items()}
    for n in names:
        for a, b in zip(serial[n], outs[n]):
            assert same_bits(np.ascontiguousarray(a), np.ascontiguousarray(b)), n


def test_gil_released_during_kernels(record_property):
    """A pure-Python counter thread keeps running while a long kernel call is in flight
    (only recorded, never asserted: it is a timing)."""
    S = torch.randn(1000, 20000)
    empty = torch.zeros(0, dtype=torch.int64)
    stop = threading.Event()
    count = [0]

    def counter():
        while not stop.is_set():
            count[0] += 1

    _ops.key_histogram(S, 16, 16, empty, 32, 0)  # warm up
    t = threading.Thread(target=counter)
    t.start()
    try:
        time.sleep(0.01)
        c0, t0 = count[0], time.perf_counter()
        hist, _ = _ops.key_histogram(S, 16, 16, empty, 32, 0)
        c1, t1 = count[0], time.perf_counter()
    finally:
        stop.set()
        t.join()
    assert int(hist.sum()) == S.numel()  # the only assertion: the kernel's result
    record_property("counter_increments_during_kernel", c1 - c0)
    print(f"\n  counter thread advanced {c1 - c0} times during a {1e3 * (t1 - t0):.1f} ms "
          "key_histogram call")


# ---------------------------------------------------------------------------
# P*G > 2**31 on the GPU, against a chunked plain-torch computation
# ---------------------------------------------------------------------------
def chunked_first_pos(S, q, g, qc, gc, rows=512):
    """(P,) first good position (general protocol, -1 if none) by plain torch, row blocks:
    best good score v (first column on ties), then count non-junk entries before it."""
    P, G = S.shape
    out = torch.empty(P, dtype=torch.int64, device=S.device)
    col = torch.arange(G, device=S.device)
    for r0 in range(0, P, rows):
        s = S[r0:r0 + rows].float()
        same = q[r0:r0 + rows, None] == g[None, :]
        cam = qc[r0:r0 + rows, None] == gc[None, :]
        good, junk = same & ~cam, same & cam
        v = torch.where(good, s, torch.full_like(s, -float("inf"))).amax(1, keepdim=True)
        idx = (good & (s == v)).to(torch.uint8).argmax(1, keepdim=True)  # first such column
        before = ~junk & ((s > v) | ((s == v) & (col[None, :] < idx)))
        out[r0:r0 + rows] = torch.where(good.any(1), before.sum(1), -1)
    return out


def chunked_counts_ge(S, q, g, t, rows=512):
    """(#genuine >= t, #impostor >= t, #impostor > t) over all pairs, row blocks."""
    n = torch.zeros(3, dtype=torch.int64, device=S.device)
    for r0 in range(0, S.shape[0], rows):
        s = S[r0:r0 + rows].float()
        same = q[r0:r0 + rows, None] == g[None, :]
        n += torch.stack([(same & (s >= t)).sum(), (~same & (s >= t)).sum(),
                          (~same & (s > t)).sum()])
    return n.tolist()


def check_against_chunked(S, q, g, qc, gc, fars=(1e-9, 1e-4, 1e-2)):
    res = metrics.rank_metrics(S, q, g, qc, gc, per_probe=True)
    expect = chunked_first_pos(S, q, g, qc, gc).cpu().numpy()
    np.testing.assert_array_equal(res.first_pos, expect)
    valid = expect >= 0
    for k in (1, 5, 10, 20):
        assert res.cmc[k - 1] == np.count_nonzero(expect[valid] < k) / valid.sum()
    tr = metrics.tar_at_far(S, q, g, fars)
    n_gen, n_imp, _ = chunked_counts_ge(S, q, g, -float("inf"))  # no NaN in S
    assert (tr.num_genuine, tr.num_impostor) == (n_gen, n_imp)
    for far, t, tar in zip(fars, tr.threshold, tr.tar):
        gen_ge, imp_ge, imp_gt = chunked_counts_ge(S, q, g, float(t))
        k = max(1, int(np.ceil(far * n_imp)))  # the smallest k >= 1 with k / N_imp >= far
        while k > 1 and (k - 1) / n_imp >= far:
            k -= 1
        while k / n_imp < far:
            k += 1
        assert imp_gt < k <= imp_ge  # t is the k-th largest impostor score
        assert tar == gen_ge / n_gen


def _random_problem(P, G, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    S = torch.rand((P, G), generator=gen, device=device, dtype=torch.float16)  # many ties
    g = torch.randint(0, 1000, (G,), generator=gen, device=device)
    q = torch.randint(0, 1100, (P,), generator=gen, device=device)
    qc = torch.randint(0, 4, (P,), generator=gen, device=device)
    gc = torch.randint(0, 4, (G,), generator=gen, device=device)
    return S, q, g, qc, gc


def test_chunked_oracle_agrees_at_small_size(device):
    """The independent computation of the large test, on a small matrix (every device)."""
    check_against_chunked(*_random_problem(300, 5000, device))


@requires_cuda
@pytest.mark.slow
def test_more_than_2_31_scores_against_chunked_torch():
    P, G = 30_000, 100_000  # 3e9 float16 scores, 6 GB; rows past 2**31 / G = 21475
    assert P * G > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 14 * 2**30:
        pytest.skip(f"needs ~14 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    check_against_chunked(*_random_problem(P, G, "cuda"), fars=(1e-9, 1e-6, 1e-3))
