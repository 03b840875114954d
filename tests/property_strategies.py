"""Hypothesis strategies shared by the property tests (tests/test_properties*.py).

Hypothesis draws the shape, the dtype, the container (numpy / torch), the memory
layout and a seed; the values come from a numpy RNG with that seed in one of a
few styles (continuous, quantised = many ties, sprinkled with NaN / +-inf / -0.0).
That keeps examples varied and cheap while every failure stays reproducible
(the profile in conftest.py derandomizes).
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from layouts import LAYOUTS, TORCH_DTYPES, Matrix, present

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])


@st.composite
def values(draw, shape, specials: bool = True, scale: float = 1.0):
    """(shape) float64 values: continuous, quantised (ties) and optionally special."""
    seed = draw(st.integers(0, 2**32 - 1))
    levels = draw(st.sampled_from([0, 1, 2, 4, 64]))  # 0 = continuous, else ties
    frac = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3])) if specials else 0.0
    rng = np.random.default_rng(seed)
    v = rng.normal(size=shape) * scale
    if levels:
        v = np.round(v * levels) / levels
    if frac:
        hit = rng.random(shape) < frac
        v[hit] = rng.choice(SPECIALS, int(hit.sum()))
    return v


@st.composite
def ids(draw, n: int, n_ids: int):
    """(n,) int64 ids in [0, n_ids): small ranges give duplicates and many genuine pairs."""
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, n_ids, n)


ID_KINDS = st.sampled_from(["int64", "int32", "float64", "torch", "list"])


@st.composite
def matrices(draw, *shape: int, specials: bool = True, device="cpu", dtypes=TORCH_DTYPES,
             scale: float = 1.0, allow_numpy: bool = True) -> Matrix:
    """A random array of `shape` in a random dtype, container and layout."""
    v = draw(values(shape, specials, scale))
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(LAYOUTS))
    use_numpy = allow_numpy and draw(st.booleans())
    return present(v, dtype, layout, use_numpy, device)
