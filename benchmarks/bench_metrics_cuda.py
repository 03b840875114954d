"""CUDA: each metric kernel vs the plain-PyTorch version of the same metric (same run).

Issue 2 targets (H100): each metric kernel >= 60% of HBM bandwidth on matrices >= 1 GB
(GB/s = bytes that must be read / time), and evaluate on 10,000 x 1,000,000 float32
well under a second. Skipped without a GPU.
"""
import os

import pytest
import torch

from conftest import bench_synced, report, requires_cuda, synthetic_scores
from qme_ext import metrics

pytestmark = requires_cuda
P = int(os.environ.get("QME_BENCH_P", "1000"))
G = int(os.environ.get("QME_BENCH_G", "1000000"))
NS = 1000


def cuda_time(fn, repeat=5):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat / 1e3


@pytest.fixture(scope="module")
def data():
    return synthetic_scores(P, G, NS, device="cuda")


def torch_rank1_map(S, q, g):
    """Plain PyTorch Rank-1 + mAP (no junk): argsort every row."""
    order = torch.argsort(S, dim=1, descending=True, stable=True)
    hit = g[order] == q[:, None]
    n = hit.sum(1)
    pos = torch.arange(1, S.shape[1] + 1, device=S.device)
    prec = hit.cumsum(1) / pos
    ap = (prec * hit).sum(1) / n.clamp(min=1)
    valid = n > 0
    return hit[valid, 0].float().mean(), ap[valid].mean()


def torch_tar(S, q, g, fars=(1e-4, 1e-3, 1e-2)):
    """Plain PyTorch TAR@FAR: genuine mask, impostor top-k."""
    mask = q[:, None] == g[None, :]
    imp, gen = S[~mask], S[mask]
    kmax = max(1, int(max(fars) * imp.numel()))
    top = torch.topk(imp, kmax).values
    return [(gen >= top[max(1, int(f * imp.numel())) - 1]).float().mean() for f in fars]


@pytest.mark.benchmark(group="rank-cuda")
def test_rank_metrics_cuda(benchmark, data):
    S, M, qp, gp, ids, uniq = data
    baseline = cuda_time(lambda: torch_rank1_map(S, qp, gp), repeat=2)
    bench_synced(benchmark, lambda: metrics.rank_metrics(S, qp, gp), "cuda")
    benchmark.extra_info.update(shape=[P, G])
    report(benchmark, baseline, S.numel() * S.element_size(), label="torch_argsort")


@pytest.mark.benchmark(group="tar-cuda")
def test_tar_at_far_cuda(benchmark, data):
    S, M, qp, gp, ids, uniq = data
    baseline = cuda_time(lambda: torch_tar(S, qp, gp), repeat=3)
    bench_synced(benchmark, lambda: metrics.tar_at_far(S, qp, gp), "cuda")
    benchmark.extra_info.update(shape=[P, G])
    # two digit passes over the matrix must read it twice
    report(benchmark, baseline, 2 * S.numel() * S.element_size(), label="torch_mask_topk")


@pytest.mark.benchmark(group="evaluate-cuda")
def test_evaluate_cuda_10k_by_1m(benchmark):
    Pb = int(os.environ.get("QME_BENCH_EVAL_P", "10000"))
    S, M, qp, gp, ids, uniq = synthetic_scores(Pb, G, NS, device="cuda")
    args = (S, M, qp, ids["q_camids"], ids["q_clothes_ids"], gp, ids["g_camids"],
            ids["g_clothes_ids"], uniq)
    bench_synced(benchmark, lambda: metrics.evaluate(*args), "cuda")
    benchmark.extra_info.update(shape=[Pb, G])
    med = benchmark.stats.stats.median
    print(f"\n  evaluate {Pb}x{G} float32 on {torch.cuda.get_device_name()}: {med * 1e3:.0f} ms")
