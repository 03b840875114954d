"""Shared fixtures: every kernel test runs on every available device."""
import os

import numpy as np
import pytest
import torch

import qme_ext

try:  # hypothesis is a test extra; without it the property tests skip themselves
    from hypothesis import HealthCheck, settings
except ImportError:
    settings = None
if settings is not None:
    # Property tests (tests/test_properties*.py): "ci" keeps the whole set to about a
    # minute on 2 cores and is reproducible (derandomize); "dev" searches harder:
    # HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties*.py
    _HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
               HealthCheck.function_scoped_fixture]  # `device` is a plain string fixture
    settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                              database=None, suppress_health_check=_HEALTH, print_blob=True)
    settings.register_profile("dev", max_examples=1000, deadline=None, database=None,
                              suppress_health_check=_HEALTH, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
