"""Features files: probe and gallery embeddings with their ids, the input of
:func:`qme_ext.metrics.evaluate_embeddings` and ``qme-ext evaluate-embeddings``
(:func:`open_features`, the one reader of CLI and API; issue 27/28).

Layout (one of)
---------------
* HDF5 (``.h5``/``.hdf5``): datasets ``probe_feats`` (P, D) and ``gallery_feats`` (G, D),
  read slice by slice; root id vectors as in a score file (docs/definitions.rst, §1): ``q_pids`` (P,),
  ``g_pids`` (G,), optional ``q_camids, q_clothes_ids`` (P,), ``g_camids, g_clothes_ids``
  (G,), ``unique_g_pids`` (S,) and ``gallery_templates`` (S, D).
* ``.npz``: the same keys (members are loaded whole when read).
* a directory of ``<key>.npy`` files with the same names, memory-mapped: the features
  are read block by block from disk.

Features float16/float32/float64, ids integers (or floats holding integers, within int64).
Without camera ids every probe and gallery entry count as different cameras (every
same-pid entry is good); without clothes ids everyone wears the same clothes (CC has no
valid probe and reports zeros).

Bad files: every member goes through the validation of the score files
(:mod:`qme_ext.io.npy_files` for ``.npy``/``.npz``: object/pickled, empty, truncated and
garbage members, a ``.npy`` named ``.npz``; HDF5 keys that are groups or dangling links;
feature dtypes other than float, id dtypes other than integer or integral float, ids beyond
int64): one :class:`~qme_ext.io.ScoreFileError` naming the file and the key.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import ScoreFileError, input_path

__all__ = ["FEATURE_KEYS", "ID_KEYS", "OPTIONAL_KEYS", "open_features", "FeaturesFile"]

FEATURE_KEYS = ("probe_feats", "gallery_feats")
ID_KEYS = ("q_pids", "q_camids", "q_clothes_ids", "g_pids", "g_camids", "g_clothes_ids")
OPTIONAL_KEYS = ("unique_g_pids", "gallery_templates")
_MATRICES = FEATURE_KEYS + ("gallery_templates",)
_KNOWN = FEATURE_KEYS + ID_KEYS + OPTIONAL_KEYS


class FeaturesFile:
    """The arrays of a features file (module docstring); ``arrays()`` the dict of
    :func:`~qme_ext.metrics.evaluate_embeddings` keyword arrays. A context manager
    (closes the HDF5 file)."""

    def __init__(self, path):
        self.path, self._h5 = os.fspath(path), None
        path = self.path
        if os.path.isdir(path):
            self.kind = "npy"
            self.items = {os.path.splitext(f)[0]: os.path.join(path, f)
                          for f in sorted(os.listdir(path)) if f.endswith(".npy")}
        else:
            if not os.path.exists(path):  # the words of the OSError a user knows
                raise ScoreFileError(f"{path}: No such file or directory")
            input_path(path, "a features file (.h5/.hdf5, .npz or a folder of .npy files)")
            if path.endswith(".npz"):
                from .npy_files import npz_members
                self.kind = "npz"
                with open(path, "rb") as fh:
                    self._data = fh.read()
                self.items = npz_members(self._data, path)
            elif path.endswith((".h5", ".hdf5")):
                from .members import _open
                self.kind = "h5"
                self._h5 = _open(path)
                self.items = set(self._h5.keys())
            else:
                raise ScoreFileError(f"{path}: expected a .h5/.hdf5 or .npz file, or a "
                                     "directory of .npy files")
        for key in FEATURE_KEYS + ("q_pids", "g_pids"):
            if key not in self.items:
                self.close()
                raise ScoreFileError(f"{path}: missing {key!r} (layout: see "
                                     "qme_ext.io.features)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _raw(self, key: str):
        """The member ``key``: a memory map, an array or an HDF5 dataset, checked."""
        if self.kind == "npy":
            from .npy_files import npy_memmap
            return npy_memmap(self.items[key], key)
        if self.kind == "npz":
            from .npy_files import npz_array
            return npz_array(self._data, self.path, key, self.items[key])
        from .members import _checked_dataset
        try:
            return _checked_dataset(self._h5, key, "f" if key in _MATRICES else "iubf",
                                    self.path)
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            if isinstance(exc, ScoreFileError):
                raise
            raise ScoreFileError(f"{self.path}: key '{key}' cannot be read "
                                 f"({' '.join(str(exc).split())})") from None

    def get(self, key: str):
        """Member ``key`` checked: features float (N, D), kept on disk where the format
        allows; ids an int64 vector in memory."""
        from .members import _as_ids
        raw = self._raw(key)
        dtype = np.dtype(raw.dtype)
        where = f"{self.path}: key '{key}' (shape {tuple(raw.shape)}, {dtype})"
        if key in _MATRICES:
            if dtype.kind != "f" or dtype.names is not None:
                raise ScoreFileError(f"{where}: expected float16/float32/float64 features")
            if len(raw.shape) != 2:
                raise ScoreFileError(f"{where}: expected a 2-D (N, D) feature array")
            return raw
        if len(raw.shape) != 1:
            raise ScoreFileError(f"{where}: expected a 1-D id vector")
        try:
            values = raw[()] if self.kind == "h5" else np.array(raw)
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise ScoreFileError(f"{where}: cannot be read ({' '.join(str(exc).split())})") \
                from None
        return _as_ids(values, key, self.path)

    def arrays(self) -> dict:
        """{keyword of evaluate_embeddings: array} with the absent camera/clothes ids
        filled in (module docstring)."""
        out = {k: self.get(k) for k in _KNOWN if k in self.items}
        P, G = len(out["q_pids"]), len(out["g_pids"])
        if "q_camids" not in out or "g_camids" not in out:
            out["q_camids"], out["g_camids"] = np.zeros(P, np.int64), np.ones(G, np.int64)
        if "q_clothes_ids" not in out or "g_clothes_ids" not in out:
            out["q_clothes_ids"] = np.zeros(P, np.int64)
            out["g_clothes_ids"] = np.zeros(G, np.int64)
        return out

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def open_features(path) -> FeaturesFile:
    """The :class:`FeaturesFile` of ``path`` (module docstring); ``with
    open_features(p) as f: metrics.evaluate_embeddings(**f.arrays())``-style use: the
    features stay on disk (HDF5, ``.npy`` folders) until scored."""
    return FeaturesFile(path)
