"""Shared fixtures: every kernel test runs on every available device."""
import numpy as np
import pytest
import torch

import qme_ext

DEVICES = ["cpu"] + (["cuda"] if qme_ext.cuda_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def requires_cuda(fn):
    return pytest.mark.cuda(pytest.mark.skipif(not qme_ext.cuda_available(),
                                               reason="needs a CUDA GPU and the CUDA module")(fn))


def make_problem(seed=0, P=40, G=250, n_ids=15, ties=True, nan_frac=0.0, dtype=np.float32):
    """A random score matrix with pids, cameras and clothes; quantised scores give ties."""
    rng = np.random.default_rng(seed)
    S = rng.normal(size=(P, G))
    if ties:
        S = np.round(S * 4) / 4
    if nan_frac:
        S[rng.random(S.shape) < nan_frac] = np.nan
    ids = dict(
        q_pids=rng.integers(0, n_ids, P), g_pids=rng.integers(0, n_ids, G),
        q_camids=rng.integers(0, 3, P), g_camids=rng.integers(0, 3, G),
        q_clothes=rng.integers(0, 2, P), g_clothes=rng.integers(0, 2, G),
    )
    return S.astype(dtype), ids


def to_device(x, device, dtype=None):
    t = torch.as_tensor(x)
    if dtype is not None:
        t = t.to(dtype)
    return t.to(device)
