"""Quality-aware scoring and template aggregation throughput (issue 5 targets).

pytest-benchmark groups (``python -m pytest benchmarks/bench_quality.py --benchmark-only -s``):

* ``qmagface-<device>``: ``QMagFace.score_matrix`` (tiled matmul, then the
  ``qme_ext::qmagface_epilogue`` kernel on each tile) against, in the same run, the bare
  ``torch.matmul`` of the normalised features with the same output dtype (the target:
  >= 70% of its throughput, i.e. ``speedup_vs_matmul >= 0.7``) and the eager PyTorch
  formula (``qme_ext.reference.quality.qmagface_score_matrix_ref``).
* ``template-aggregate-<device>``: ``aggregate_templates`` (``qme_ext::template_aggregate``)
  against the eager reference (``template_aggregate_ref``), with GB/s of the bytes that must
  be touched (features and weights read once, templates written once) and % of peak.

CUDA cells skip without a GPU. As a script, ``python benchmarks/bench_quality.py [--quick]``
prints the same cells and, on a GPU, the full 10,000 x 1,000,000 x 512 bf16 score matrix
(20 GB of bf16 output) tile by tile against a tiled bare matmul.
"""
from __future__ import annotations

import argparse

import pytest
import torch

import qme_ext
from conftest import bench_synced, device_info, median_time, report, requires_cuda
from qme_ext.quality import QMagFace, aggregate_templates
from qme_ext.reference.quality import qmagface_score_matrix_ref, template_aggregate_ref

# (P, G, D, feature dtype); the output has the features' dtype, like the bare matmul's
SCORE_CELLS = {"cpu": [(512, 8192, 512, torch.float32)],
               "cuda": [(4096, 262144, 512, torch.bfloat16), (4096, 262144, 512, torch.float32)]}
SCORE_BLOCK = {"cpu": (256, 4096), "cuda": (2048, 65536)}
# (N rows, D, T templates, feature dtype)
AGG_CELLS = {"cpu": [(100_000, 512, 5_000, torch.float32)],
             "cuda": [(4_000_000, 512, 100_000, torch.bfloat16),
                      (4_000_000, 512, 100_000, torch.float32)]}


def _features(n, d, dtype, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(n, d, generator=g) * 20).to(dtype).to(device)  # MagFace-like norms


def score_matrix_cell(P, G, D, dtype, device):
    """(run the op, run the bare matmul, run the eager formula) on one problem."""
    pf, gf = _features(P, D, dtype, device, 0), _features(G, D, dtype, device, 1)
    qm = QMagFace("magface-r100")
    pn = torch.nn.functional.normalize(pf.float(), dim=1).to(dtype)
    gn = torch.nn.functional.normalize(gf.float(), dim=1).to(dtype)
    block = SCORE_BLOCK[torch.device(device).type]
    return (lambda: qm.score_matrix(pf, gf, block=block, out_dtype=dtype),
            lambda: pn @ gn.T,
            lambda: qmagface_score_matrix_ref(pf, gf, qm.alpha, qm.beta))


def aggregate_cell(N, D, T, dtype, device):
    """(run the op, run the eager reference, bytes that must be touched)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    f = torch.randn(N, D, generator=g).to(dtype).to(device)
    w = torch.rand(N, generator=g).to(device)
    cuts = torch.sort(torch.randint(0, N, (T - 1,), generator=g)).values
    off = torch.cat([torch.tensor([0]), cuts, torch.tensor([N])]).to(device)
    touched = f.numel() * f.element_size() + w.numel() * 4 + off.numel() * 8 + T * D * 4
    return (lambda: aggregate_templates(f, w, off, True),
            lambda: template_aggregate_ref(f, w, off, True), touched)


def _skip_if_too_big(nbytes):
    free, _ = torch.cuda.mem_get_info()
    if nbytes > free / 4:
        pytest.skip(f"needs {nbytes / 2**30:.1f} GiB, a quarter of the free GPU memory")


def run_score_matrix(benchmark, device, P, G, D, dtype):
    ours, matmul, eager = score_matrix_cell(P, G, D, dtype, device)
    bench_synced(benchmark, ours, device, rounds=3)
    benchmark.extra_info.update(shape=[P, G, D], dtype=str(dtype),
                                TFLOP_per_s=2.0 * P * G * D / benchmark.stats.stats.median / 1e12)
    report(benchmark, median_time(eager, device, repeat=3), label="eager")
    report(benchmark, median_time(matmul, device, repeat=3), label="matmul")


def run_aggregate(benchmark, device, N, D, T, dtype):
    ours, eager, touched = aggregate_cell(N, D, T, dtype, device)
    bench_synced(benchmark, ours, device, rounds=3)
    benchmark.extra_info.update(N=N, D=D, T=T, dtype=str(dtype))
    report(benchmark, median_time(eager, device, repeat=3), touched, label="eager")


# one test per op; the device is a parameter (its id names the group and the device record)
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def _cell(table, device, cell, gpu_bytes):
    """The cell-th problem of `device` in `table`; skips what does not exist or fit."""
    if cell >= len(table[device]):
        pytest.skip(f"{device} has {len(table[device])} cell(s)")
    if device == "cuda":
        _skip_if_too_big(gpu_bytes(*table[device][cell][:3]))
    return table[device][cell]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", [0, 1])
def test_score_matrix(benchmark, device, cell):
    # GPU memory: the op's output, the matmul's and the eager formula's intermediates
    P, G, D, dtype = _cell(SCORE_CELLS, device, cell, lambda P, G, D: P * G * 16)
    benchmark.group = f"qmagface-{device}"
    run_score_matrix(benchmark, device, P, G, D, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", [0, 1])
def test_template_aggregate(benchmark, device, cell):
    # GPU memory: the features, the eager reference's float copy and its product
    N, D, T, dtype = _cell(AGG_CELLS, device, cell, lambda N, D, T: N * D * 12)
    benchmark.group = f"template-aggregate-{device}"
    run_aggregate(benchmark, device, N, D, T, dtype)


def full_size_score_matrix(device):
    """10,000 x 1,000,000 x 512 bf16 -> bf16 (issue 5): per tile, the bare tile matmul
    copied into the output vs score_matrix writing the same output."""
    P, G, D = 10_000, 1_000_000, 512
    pf, gf = _features(P, D, torch.bfloat16, device, 0), _features(G, D, torch.bfloat16, device, 1)
    qm = QMagFace("magface-r100")
    bp, bg = SCORE_BLOCK["cuda"]
    pn = torch.nn.functional.normalize(pf.float(), dim=1).to(torch.bfloat16)
    gn = torch.nn.functional.normalize(gf.float(), dim=1).to(torch.bfloat16)
    out = torch.empty(P, G, dtype=torch.bfloat16, device=device)

    def bare():
        for i in range(0, P, bp):
            for j in range(0, G, bg):
                out[i:i + bp, j:j + bg] = pn[i:i + bp] @ gn[j:j + bg].T

    t_mm = median_time(bare, device, repeat=1)
    out = None  # release the tiled output before score_matrix allocates its own
    t_q = median_time(lambda: qm.score_matrix(pf, gf, block=(bp, bg), out_dtype=torch.bfloat16),
                      device, repeat=1)
    flops = 2.0 * P * G * D
    print(f"score_matrix cuda {P}x{G}x{D} bf16 -> bf16: tiled matmul+copy {t_mm:.2f} s "
          f"({flops / t_mm / 1e12:.1f} TFLOP/s), qmagface {t_q:.2f} s "
          f"({flops / t_q / 1e12:.1f} TFLOP/s), throughput ratio {t_mm / t_q:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the full-size GPU run")
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if qme_ext.cuda_available() else [])
    for device in devices:
        print("environment:", device_info(device))
        for P, G, D, dtype in SCORE_CELLS[device]:
            ours, matmul, eager = score_matrix_cell(P, G, D, dtype, device)
            t, t_mm, t_e = (median_time(f, device, repeat=3) for f in (ours, matmul, eager))
            print(f"score_matrix {device} {P}x{G}x{D} {dtype}: {t * 1e3:.1f} ms, bare matmul "
                  f"{t_mm * 1e3:.1f} ms (throughput ratio {t_mm / t:.2f}), eager "
                  f"{t_e * 1e3:.1f} ms (x{t_e / t:.1f})")
        for N, D, T, dtype in AGG_CELLS[device]:
            ours, eager, touched = aggregate_cell(N, D, T, dtype, device)
            t, t_e = median_time(ours, device, repeat=3), median_time(eager, device, repeat=3)
            print(f"template_aggregate {device} N={N} D={D} T={T} {dtype}: {t * 1e3:.2f} ms "
                  f"({touched / t / 1e9:.1f} GB/s), eager {t_e * 1e3:.2f} ms (x{t_e / t:.1f})")
    if "cuda" in devices and not args.quick:
        full_size_score_matrix("cuda")
    elif "cuda" not in devices:
        print("CUDA cells skipped: no GPU / CUDA module")


if __name__ == "__main__":
    main()
