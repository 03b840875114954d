"""torch.library contracts of every custom op: opcheck (schema, fake, autograd
registration) and tracing under torch.compile."""
import numpy as np
import pytest
import torch

from conftest import make_problem
from qme_ext.metrics import accumulate as _accumulate
from qme_ext.ops import evaluation as _ops
from qme_ext import metrics
from qme_ext.metrics import core as metrics_core


def _rank_args(device):
    S, ids = make_problem(0, P=12, G=40)
    t = torch.from_numpy(S).to(device)
    cand = metrics_core._same_pid_candidates(torch.from_numpy(ids["q_pids"]).to(device),
                                        torch.from_numpy(ids["g_pids"]).to(device))
    flags = _accumulate.mode_flags(cand, ["general"], torch.from_numpy(ids["q_camids"]).to(device),
                                    torch.from_numpy(ids["g_camids"]).to(device), None, None)
    return (t, cand.offsets, cand.index, flags, 1, cand.max_per_probe)


def test_opcheck_rank_counts(device):
    torch.library.opcheck(_ops.rank_counts, _rank_args(device),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_opcheck_key_histogram(device):
    S = torch.randn(9, 33, device=device)
    for prefixes in (torch.zeros(0, dtype=torch.int64, device=device),
                     torch.tensor([0x8000, 0x3F80], dtype=torch.int64, device=device)):
        shift = 16 if prefixes.numel() == 0 else 0
        torch.library.opcheck(_ops.key_histogram, (S, shift, 16, prefixes, 32 if shift else 16, 0),
                              test_utils=("test_schema", "test_faketensor",
                                          "test_autograd_registration"))


def test_opcheck_openset_stats(device):
    M = torch.randn(7, 5, device=device)
    gcol = torch.tensor([0, 1, -1, 4, 2, -1, 3], device=device)
    enrolled = torch.randint(0, 2, (3, 5), dtype=torch.uint8, device=device)
    torch.library.opcheck(_ops.openset_stats, (M, gcol, enrolled),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_key_histogram_counts_match_numpy():
    from qme_ext.ops.keys import keys32
    S = torch.randn(20, 50)
    S[0, :5] = float("nan")
    hist, stats = _ops.key_histogram(S, 16, 16, torch.zeros(0, dtype=torch.int64), 32, 0)
    k = keys32(S.numpy().ravel())
    np.testing.assert_array_equal(hist[0].numpy(), np.bincount((k >> 16).astype(np.int64),
                                                                minlength=1 << 16))
    assert int(stats[0]) == 5
    finite = k[k != 0]
    assert int(stats[1]) == int(finite.min()) and int(stats[2]) == int(finite.max())


def test_torch_compile_traces_the_ops():
    S = torch.randn(10, 30)
    gcol = torch.arange(10) % 30
    enrolled = torch.ones((2, 30), dtype=torch.uint8)

    def f(x):
        mo, ng, _ = _ops.openset_stats(x, gcol, enrolled)
        return mo.sum() + ng.sum()

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(S), f(S))


def test_openset_stats_refuses_out_of_range_genuine_col(device):
    scores = torch.randn(3, 4, device=device)
    enrolled = torch.ones(2, 4, dtype=torch.uint8, device=device)
    for bad in ([0, 4, -1], [0, -2, 1]):
        col = torch.tensor(bad, dtype=torch.int64, device=device)
        with pytest.raises(ValueError, match="genuine_col"):
            torch.ops.qme_ext.openset_stats(scores, col, enrolled)
    with pytest.raises(ValueError, match="enrolled"):
        torch.ops.qme_ext.openset_stats(scores, torch.zeros(3, dtype=torch.int64, device=device),
                                        enrolled[:, :3])


@pytest.mark.parametrize("bits, dtype", [(32, np.float32), (64, np.float64)])
def test_values_of_keys_inverts_the_keys(bits, dtype):
    from qme_ext.ops.keys import keys, value_of_key, values_of_keys
    v = np.array([np.nan, -np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.25, np.inf,
                  np.finfo(dtype).max, -np.finfo(dtype).tiny], dtype=dtype)
    k = keys(v, bits)
    got = values_of_keys(k, bits)
    want = np.array([value_of_key(x, bits) for x in k])
    np.testing.assert_array_equal(got, want)  # NaN where NaN, -0.0 keyed as +0.0
    assert np.array_equal(got[1:], np.where(v[1:] == 0, 0.0, v[1:]).astype(np.float64))
