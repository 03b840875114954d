"""Fused normalise + combine (qme_ext::fuse_scores) and the one-pass normaliser statistics
(qme_ext::score_stats) vs the same computations in eager PyTorch
(qme_ext.reference.fusion), both timed in the same run.

K = 3 float32 matrices, z-score/tanh/z-score normalisers, weighted sum and Asym-AO.
CPU: 1,000 x 20,000 per matrix (80 MB each). CUDA (issue 3 target: >= 60% of HBM
bandwidth): 10,000 x 27,000 per matrix (1.08 GB each); GB/s counts each input read
once and the float32 output written once. Skipped without a GPU.

    python -m pytest benchmarks/bench_fusion.py --benchmark-only -s
"""
import pytest
import torch

from conftest import bench_synced, median_time, report, requires_cuda
from qme_ext.ops.fusion import (NORM_AFFINE, NORM_TANH, RULE_ASYM_AO, RULE_SUM, fuse_scores,
                                score_stats)
from qme_ext.reference.fusion import fuse_scores_ref, score_stats_ref

SHAPES = {"cpu": (1_000, 20_000), "cuda": (10_000, 27_000)}
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", [RULE_SUM, RULE_ASYM_AO], ids=["weighted", "asym_ao"])
def test_fuse_scores(benchmark, device, rule):
    P, G = SHAPES[device]
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if 7 * P * G * 8 > free:  # inputs, output and the eager path's float64 temporaries
            pytest.skip("not enough free GPU memory for the eager baseline")
    gen = torch.Generator(device=device).manual_seed(0)
    mats = [torch.randn((P, G), generator=gen, device=device) for _ in range(3)]
    norm = [NORM_AFFINE, NORM_TANH, NORM_AFFINE]
    shift, div = ([0.1, 0.0, -0.2], [1.3, 1.0, 0.9]) if rule == RULE_SUM else \
        ([-4.0, 0.0, -5.0], [8.0, 1.0, 10.0])  # Asym-AO folds scores in [0, 1]
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64, device=device)
    args = (mats, norm, shift, div, rule, w, 2.0)

    benchmark.group = f"fuse-scores-{device}"
    bench_synced(benchmark, lambda: fuse_scores(*args, torch.float32), device)
    eager = median_time(lambda: fuse_scores_ref(*args, torch.float32), device, repeat=3)
    benchmark.extra_info.update(shape=[3, P, G], rule=["weighted", "", "", "asym_ao"][rule])
    report(benchmark, eager, bytes_touched=3 * P * G * 4 + P * G * 4, label="eager")
    got = fuse_scores(*args, torch.float32)
    assert torch.allclose(got, fuse_scores_ref(*args, torch.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_score_stats(benchmark, device):
    """The normalisers' statistics in one pass vs the eager mask + reductions."""
    P, G = SHAPES[device]
    gen = torch.Generator(device=device).manual_seed(1)
    S = torch.randn((P, G), generator=gen, device=device)
    q = torch.randint(0, 1000, (P,), generator=gen, device=device)
    g = torch.randint(0, 1000, (G,), generator=gen, device=device)

    benchmark.group = f"score-stats-{device}"
    bench_synced(benchmark, lambda: score_stats(S, q, g), device)
    eager = median_time(lambda: score_stats_ref(S, q, g), device, repeat=3)
    benchmark.extra_info.update(shape=[P, G])
    report(benchmark, eager, bytes_touched=P * G * 4 + (P + G) * 8, label="eager")
