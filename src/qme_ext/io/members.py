"""The checked readers that score files (:mod:`qme_ext.io`) and features files
(:mod:`qme_ext.io.features`) share: opening an HDF5 file, one dataset of an expected dtype
kind, an id vector as int64. Every failure is a :class:`ScoreFileError` naming the file and
the key. Layer: numpy, h5py and ``ops.ids`` (numpy only), as the rest of ``io``."""
from __future__ import annotations

import os
import stat
from typing import Optional

import numpy as np

from ..ops.ids import beyond_int64, describe_beyond  # numpy only, like io
from .errors import ScoreFileError, input_path


def _where(source: Optional[str]) -> str:
    return f"{source}: " if source else ""


def _as_ids(values, key: str, source: Optional[str] = None) -> np.ndarray:
    """1-D int64 copy of ``values``; floats must be finite and integral (else ScoreFileError)."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        return _int64(arr, key, source)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if not bad.any():
            bad = arr != np.round(arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ScoreFileError(f"{_where(source)}key '{key}' (shape {arr.shape}, {arr.dtype}) "
                                 f"holds a non-integral or non-finite id {arr.flat[i]!r} at "
                                 f"index {i}")
        return _int64(arr, key, source)
    raise ScoreFileError(f"{_where(source)}key '{key}' (shape {arr.shape}) has dtype "
                         f"{arr.dtype}, expected integer or integral float ids")


def _int64(arr: np.ndarray, key: str, source: Optional[str]) -> np.ndarray:
    """int64 copy of integral ids; an id that int64 cannot hold is refused, not wrapped."""
    i = beyond_int64(arr)
    if i is not None:
        raise ScoreFileError(f"{_where(source)}key '{key}' (shape {arr.shape}, {arr.dtype}): "
                             f"{describe_beyond(arr, i)}")
    return arr.astype(np.int64)


def _open(path):
    """Open ``path`` read-only, turning every failure into a ScoreFileError naming the file."""
    import h5py
    path = input_path(path, "an HDF5 file")
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError as exc:
        raise ScoreFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not regular:  # h5py reads a file several times: a pipe would be consumed by the first
        raise ScoreFileError(f"{path}: not a regular file (a pipe?); an HDF5 score file must "
                             f"be seekable: save it to a file first")
    try:
        ok = h5py.is_hdf5(path)
    except OSError as exc:
        raise ScoreFileError(f"{path}: cannot read ({exc})") from None
    if not ok:
        raise ScoreFileError(f"{path}: not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ScoreFileError(f"{path}: cannot open as HDF5 ({exc})") from None


# dtype kinds a key may hold: ids as the metrics API takes them (as_ids), matrices float only
_ID_KINDS, _MATRIX_KINDS = "iubf", "f"


def _checked_dataset(f, key: str, kinds: str, source: str):
    """``f[key]`` if it is a dataset of a dtype kind in ``kinds``, else ScoreFileError (a
    group, a dangling soft or external link, another dtype)."""
    import h5py
    try:
        obj = f[key]
    except KeyError:  # the name exists (a link) but leads nowhere
        link = f.get(key, getlink=True)
        raise ScoreFileError(f"{source}: key '{key}' is a dangling link "
                             f"({type(link).__name__}), expected a dataset") from None
    if not isinstance(obj, h5py.Dataset):
        raise ScoreFileError(f"{source}: key '{key}' is a {type(obj).__name__.lower()}, "
                             f"expected a dataset")
    dt = obj.dtype
    if dt.kind not in kinds or dt.names is not None or dt.subdtype is not None:
        want = ("floating-point scores (float16/float32/float64; the metrics API refuses "
                "other dtypes too)" if kinds == _MATRIX_KINDS
                else "integer or integral float ids")
        raise ScoreFileError(f"{source}: key '{key}' (shape {obj.shape}) has dtype {dt}, "
                             f"expected {want}")
    return obj
