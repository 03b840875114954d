"""Ids beyond int64: the one check that the file reader (``io``) and the API boundary
(``ops.inputs``) share, in numpy only (``io`` loads no torch).

Every id is used as an int64; a uint64 id >= 2**63, or a float id outside [-2**63, 2**63),
would wrap or saturate on the cast and silently merge subjects, so it is refused instead.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

INT64_MIN, INT64_END = -2 ** 63, 2 ** 63  # the int64 range [INT64_MIN, INT64_END)


def beyond_int64(arr: np.ndarray) -> Optional[int]:
    """Index (into ``arr.flat``) of the first id that int64 cannot hold exactly, or None.

    ``arr``: integer, bool or float ids of any shape (floats already known finite).
    """
    kind = arr.dtype.kind
    if arr.size == 0 or kind in "ib":
        return None
    if kind == "u":
        bad = arr >= np.uint64(INT64_END) if arr.dtype.itemsize == 8 else None
    elif kind == "f":
        # 2**63 is exact in every float width; -2**63 itself converts exactly
        bad = (arr >= float(INT64_END)) | (arr < float(INT64_MIN))
    else:
        return None
    if bad is None or not bad.any():
        return None
    return int(np.flatnonzero(bad.reshape(-1))[0])


def describe_beyond(arr: np.ndarray, i: int) -> str:
    """'id 9223372036854775808 at index 3 is beyond int64 (ids must lie in [-2**63, 2**63))'."""
    return (f"id {arr.reshape(-1)[i].item()!r} at index {i} is beyond int64 (ids must lie in "
            f"[-2**63, 2**63): a wider id would wrap on the cast and merge subjects)")
