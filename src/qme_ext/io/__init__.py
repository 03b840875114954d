"""HDF5 score files in the QME ``scoremats`` layout (docs/definitions.rst, §1) and the in-memory :class:`ScoreSet`.

Layout (P probes, G gallery entries, S gallery subjects)::

    {model}/score_mat          float32 (P, G)   probe vs every gallery entry
    {model}/merge_score_mat    float32 (P, S)   probe vs one template per subject (optional)
    q_pids, q_camids, q_clothes_ids              (P,)  ids, int or integral float
    g_pids, g_camids, g_clothes_ids              (G,)
    unique_g_pids                                (S,)  column order of merge_score_mat
    quality/{name}             float32 (P, D)   optional per-probe quality features
    quality/{name}_weights     float32 (P, 1)   optional precomputed quality in [0, 1]
    attribute ``models``       "a,b,c"          optional model order

Choices
-------
- Model order: the ``models`` attribute when present, else the sorted names of the root groups
  that hold a ``score_mat``. :func:`save_scores` always writes the attribute.
- Score and quality arrays are loaded as float32 (a float64 file is narrowed); ids as int64. Ids
  stored as floats are accepted only when finite and integral, and ids only within int64,
  because a silent truncation or wrap would merge subjects.
- Every problem with a file is one :class:`ScoreFileError` (a ``ValueError``) naming the file, the
  key and the shapes involved. The same shape checker serves :meth:`ScoreSet.validate` and
  :func:`load_scores` (which checks the dataset shapes before reading any data).
- :meth:`ScoreSet.subset_models` / :meth:`ScoreSet.with_model` return new objects sharing the
  (treated as read-only) arrays: no copies of large matrices.
- :func:`save_scores` builds the HDF5 image in memory (h5py on a ``BytesIO``) and writes it
  through :func:`qme_ext.io.output.write_atomic`, the one writer of every output: a full disk
  is one ``OutputError`` (h5py itself crashes when the file it writes fails), the old file is
  kept byte for byte and a new file gets the umask's mode.
- Reading: every key must be a dataset (not a group); id datasets integer, bool or integral
  float; score and quality datasets floating-point (float16/32/64), the dtypes the metrics
  API accepts, so the command line never casts a complex, bool, integer or string matrix
  that the API would refuse. Anything h5py cannot read (truncated or corrupt file, odd
  types) is a :class:`ScoreFileError` naming the file. A score file must be a regular
  (seekable) file: a pipe is refused with a message rather than read twice.

Layer: imports nothing of qme_ext outside ``io`` (numpy and h5py only) but the numpy-only
``ops.ids``; ``errors``, ``members`` (the checked HDF5 dataset and id readers that score and
features files share), ``pair_files``, ``features`` (features files), ``npy_files`` (the
one check of ``.npy``/``.npz`` members) and ``output`` (the one writer of every output file)
are its parts; the layers above (fusion, metrics, qme, plots, cli) read and write files
through it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io as _bytes_io
import os
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .errors import OutputError, ScoreFileError
from .members import _ID_KINDS, _MATRIX_KINDS, _as_ids, _checked_dataset, _open, _where
from .output import atomic_output, same_file, write_atomic

__all__ = [
    "ScoreFileError",
    "OutputError",
    "ScoreSet",
    "load_scores",
    "load_calibration",
    "list_models",
    "save_scores",
    "iter_row_blocks",
    "load_ids",
    "PROBE_ID_KEYS",
    "GALLERY_ID_KEYS",
    "atomic_output",
    "write_atomic",
    "same_file",
    "hdf5_image",
    "check_model_name",
]

PROBE_ID_KEYS = ("q_pids", "q_camids", "q_clothes_ids")
GALLERY_ID_KEYS = ("g_pids", "g_camids", "g_clothes_ids")
ID_KEYS = PROBE_ID_KEYS + GALLERY_ID_KEYS + ("unique_g_pids",)
QUALITY_GROUP = "quality"

Rows = Union[slice, Sequence[int], np.ndarray, None]


def check_model_name(name, what: str = "model name") -> str:
    """``name`` if it can be a model's group in a score file, else ValueError naming ``what``:
    a non-empty string without ',' (the ``models`` attribute's separator), '/' (an HDF5
    path), control characters or surrounding whitespace (which ``models`` lists strip),
    and none of the file's own keys (the id vectors, ``quality``, '.', '..')."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"invalid {what} {name!r}: expected a non-empty name")
    if name != name.strip() or any(c in name for c in ",/") or not name.isprintable():
        raise ValueError(f"invalid {what} {name!r}: no ',', '/', control characters or "
                         "surrounding whitespace")
    if name in ID_KEYS + (QUALITY_GROUP, ".", ".."):
        raise ValueError(f"invalid {what} {name!r}: a reserved key of the score file layout "
                         f"({', '.join(ID_KEYS + (QUALITY_GROUP,))})")
    return name


def _check_shapes(shapes: dict, models: Sequence[str], source: Optional[str] = None) -> None:
    """Check the docs/definitions.rst, §1 shape rules on a ``{key: shape tuple}`` map.

    Keys are file keys (``"q_pids"``, ``"face/score_mat"``, ``"quality/face"``...). Raises
    :class:`ScoreFileError` naming ``source`` (the file, if any), the key and the shapes.
    """
    w = _where(source)
    merges = [m for m in models if f"{m}/merge_score_mat" in shapes]
    for key in ID_KEYS:
        if key == "unique_g_pids" and key not in shapes and not merges:
            continue  # a training file: subjects are derived from g_pids (docs/definitions.rst, §1)
        if key not in shapes:
            why = (f" (the column order of {merges[0]}/merge_score_mat)"
                   if key == "unique_g_pids" else "")
            raise ScoreFileError(f"{w}missing key '{key}'{why}")
        if len(shapes[key]) != 1:
            raise ScoreFileError(f"{w}key '{key}' must be 1-D, got shape {shapes[key]}")
    n_probe = shapes["q_pids"][0]
    n_gallery = shapes["g_pids"][0]
    n_subj = shapes.get("unique_g_pids", (None,))[0]
    for key in PROBE_ID_KEYS[1:]:
        if shapes[key][0] != n_probe:
            raise ScoreFileError(f"{w}length mismatch: '{key}' has shape {shapes[key]} but "
                                 f"'q_pids' has shape {shapes['q_pids']}")
    for key in GALLERY_ID_KEYS[1:]:
        if shapes[key][0] != n_gallery:
            raise ScoreFileError(f"{w}length mismatch: '{key}' has shape {shapes[key]} but "
                                 f"'g_pids' has shape {shapes['g_pids']}")
    if not models:
        raise ScoreFileError(f"{w}no model: no group holds a 'score_mat'")
    for m in models:
        try:
            check_model_name(m)
        except ValueError as exc:
            raise ScoreFileError(f"{w}{exc}") from None
        key = f"{m}/score_mat"
        if key not in shapes:
            raise ScoreFileError(f"{w}missing key '{key}'")
        want = (n_probe, n_gallery)
        if tuple(shapes[key]) != want:
            raise ScoreFileError(f"{w}key '{key}' has shape {tuple(shapes[key])}, expected "
                                 f"(P, G) = {want} from 'q_pids' {shapes['q_pids']} and "
                                 f"'g_pids' {shapes['g_pids']}")
        key = f"{m}/merge_score_mat"
        if key in shapes and tuple(shapes[key]) != (n_probe, n_subj):
            raise ScoreFileError(f"{w}key '{key}' has shape {tuple(shapes[key])}, expected "
                                 f"(P, S) = {(n_probe, n_subj)} from 'q_pids' "
                                 f"{shapes['q_pids']} and 'unique_g_pids' "
                                 f"{shapes['unique_g_pids']}")
    for key, shape in shapes.items():
        if not key.startswith(QUALITY_GROUP + "/"):
            continue
        if len(shape) != 2 or shape[0] != n_probe:
            raise ScoreFileError(f"{w}key '{key}' has shape {tuple(shape)}, expected "
                                 f"(P, D) with P = {n_probe} ('q_pids' {shapes['q_pids']})")
        if key.endswith("_weights") and shape[1] != 1:
            raise ScoreFileError(f"{w}key '{key}' has shape {tuple(shape)}, expected "
                                 f"(P, 1) = {(n_probe, 1)}")


def _float32(values, key: str, source: Optional[str]) -> np.ndarray:
    """``values`` as float32; a finite value that float32 cannot hold (a float64 file's
    score beyond +-3.4e38) is refused rather than narrowed to +-inf."""
    arr = np.asarray(values)
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if out.dtype != arr.dtype and not np.isfinite(out).all():
        grew = np.isinf(out) & np.isfinite(arr)
        if grew.any():
            i = int(np.flatnonzero(grew.reshape(-1))[0])
            raise ScoreFileError(
                f"{_where(source)}key '{key}' ({arr.dtype}) holds {arr.reshape(-1)[i].item()!r} at flat "
                f"index {i}, beyond float32's range (+-3.4e38): scores are read as float32 and "
                "it would become +-inf; rescale the scores")
    return out


@dataclasses.dataclass
class ScoreSet:
    """Score matrices of K models against one probe/gallery split, plus the id vectors.

    Attributes
    ----------
    models : list[str]
        Model names in their fixed order (the channel order of QME's inputs).
    score_mats : dict[str, ndarray]
        float32 ``(P, G)`` per model.
    merge_score_mats : dict[str, ndarray]
        float32 ``(P, S)`` per model; a model may be absent (e.g. a training file).
    q_pids, q_camids, q_clothes_ids : ndarray
        int64 ``(P,)``.
    g_pids, g_camids, g_clothes_ids : ndarray
        int64 ``(G,)``.
    unique_g_pids : ndarray
        int64 ``(S,)``, the column order of the merge matrices.
    quality : dict[str, ndarray]
        ``{name: float32 (P, D)}`` features and ``{name + "_weights": float32 (P, 1)}``
        quality values in [0, 1] (file group ``quality/``).
    """

    models: list
    score_mats: dict
    merge_score_mats: dict
    q_pids: np.ndarray
    q_camids: np.ndarray
    q_clothes_ids: np.ndarray
    g_pids: np.ndarray
    g_camids: np.ndarray
    g_clothes_ids: np.ndarray
    unique_g_pids: np.ndarray
    quality: dict = dataclasses.field(default_factory=dict)

    @property
    def num_probes(self) -> int:
        return int(np.shape(self.q_pids)[0])

    @property
    def num_gallery(self) -> int:
        return int(np.shape(self.g_pids)[0])

    def ids(self) -> dict:
        """The seven id vectors by key name (the keyword names of ``metrics.evaluate``)."""
        return {k: getattr(self, k) for k in ID_KEYS}

    def _shapes(self) -> dict:
        shapes = {k: np.shape(v) for k, v in self.ids().items()}
        for m, mat in self.score_mats.items():
            shapes[f"{m}/score_mat"] = np.shape(mat)
        for m, mat in self.merge_score_mats.items():
            shapes[f"{m}/merge_score_mat"] = np.shape(mat)
        for name, arr in self.quality.items():
            shapes[f"{QUALITY_GROUP}/{name}"] = np.shape(arr)
        return shapes

    def validate(self, source: Optional[str] = None) -> "ScoreSet":
        """Check every length rule of docs/definitions.rst, §1; raise :class:`ScoreFileError` (a ValueError).

        Returns ``self`` so that calls can be chained.
        """
        w = _where(source)
        if len(set(self.models)) != len(self.models):
            raise ScoreFileError(f"{w}duplicate model names in {self.models}")
        extra = (set(self.score_mats) | set(self.merge_score_mats)) - set(self.models)
        if extra:
            raise ScoreFileError(f"{w}matrices for models {sorted(extra)} not listed in "
                                 f"models {self.models}")
        _check_shapes(self._shapes(), self.models, source)
        return self

    def subset_models(self, names: Union[str, Sequence[str]]) -> "ScoreSet":
        """A ScoreSet with only ``names`` (a list or "a,b"), in that order."""
        names = _split_names(names)
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise ScoreFileError(f"unknown model(s) {unknown}; available: {self.models}")
        return dataclasses.replace(
            self,
            models=list(names),
            score_mats={n: self.score_mats[n] for n in names},
            merge_score_mats={n: self.merge_score_mats[n] for n in names
                              if n in self.merge_score_mats},
        )

    def with_model(self, name: str, score_mat, merge_score_mat=None) -> "ScoreSet":
        """A new ScoreSet with model ``name`` appended (float32 copies of the given matrices)."""
        check_model_name(name)
        if name in self.models:
            raise ValueError(f"model {name!r} already exists in {self.models}")
        score_mats = dict(self.score_mats)
        score_mats[name] = np.asarray(score_mat, dtype=np.float32)
        merge = dict(self.merge_score_mats)
        if merge_score_mat is not None:
            merge[name] = np.asarray(merge_score_mat, dtype=np.float32)
        out = dataclasses.replace(self, models=list(self.models) + [name],
                                  score_mats=score_mats, merge_score_mats=merge)
        return out.validate()


def _split_names(names) -> list:
    if isinstance(names, str):
        return [n.strip() for n in names.split(",") if n.strip()]
    return list(names)


def _file_models(f) -> list:
    """Model order of an open file: the ``models`` attribute, else sorted score_mat groups."""
    attr = f.attrs.get("models")
    if attr is not None:
        if isinstance(attr, bytes):
            attr = attr.decode("utf-8", "replace")
        if not isinstance(attr, str):
            raise ScoreFileError(f"{f.filename}: attribute 'models' must be a string such as "
                                 f"'face,body', got {type(attr).__name__}")
        return _split_names(attr)
    import h5py
    return sorted(k for k, v in f.items()
                  if isinstance(v, h5py.Group) and "score_mat" in v and k != QUALITY_GROUP)


def list_models(path) -> list:
    """Model order of a score file (its ``models`` attribute, else sorted groups)."""
    with _reading(path) as f:
        return _file_models(f)


def load_calibration(path, models: Sequence[str]) -> "ScoreSet":
    """The calibration ScoreSet of ``models``: those of them that ``path`` holds, in that order.

    A model only in the evaluated file (e.g. a fused ``qme``) cannot be calibrated; fusions
    then combine the others, and it is evaluated as a row of its own.
    """
    source = os.fspath(path)
    held = [m for m in _split_names(models) if m in list_models(source)]
    if not held:
        raise ScoreFileError(f"{source}: holds none of the models {list(models)}")
    return load_scores(source, models=held)


@contextlib.contextmanager
def _reading(path):
    """The open file (as :func:`_open`); whatever h5py or numpy raise while it is read (a
    truncated or corrupt file, a type h5py cannot convert, a shape too large for memory)
    becomes one :class:`ScoreFileError` naming the file."""
    source = os.fspath(path)
    f = _open(source)
    try:
        with f:
            yield f
    except ScoreFileError:
        raise
    except MemoryError:
        raise ScoreFileError(f"{source}: not enough memory to read it whole (evaluate it out "
                             f"of core with --max-memory)") from None
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ScoreFileError(f"{source}: cannot read ({message})") from None


def _dataset_shapes(f, models: Sequence[str]) -> dict:
    """``{key: shape}`` of the file's datasets, each checked to be a dataset of its dtype."""
    import h5py
    source = f.filename
    shapes = {}
    for key in ID_KEYS:
        if key in f:
            shapes[key] = tuple(_checked_dataset(f, key, _ID_KINDS, source).shape)
    for m in models:
        if m in f and not isinstance(f[m], h5py.Group):
            raise ScoreFileError(f"{source}: key '{m}' is a dataset, expected the group of "
                                 f"model {m!r}")
        for leaf in ("score_mat", "merge_score_mat"):
            key = f"{m}/{leaf}"
            if key in f:
                shapes[key] = tuple(_checked_dataset(f, key, _MATRIX_KINDS, source).shape)
    if QUALITY_GROUP in f:
        if not isinstance(f[QUALITY_GROUP], h5py.Group):
            raise ScoreFileError(f"{source}: key '{QUALITY_GROUP}' is a dataset, expected the "
                                 f"group of quality features")
        for name in f[QUALITY_GROUP]:
            key = f"{QUALITY_GROUP}/{name}"
            shapes[key] = tuple(_checked_dataset(f, key, _MATRIX_KINDS, source).shape)
    return shapes


def _resolve_models(f, models, source: str) -> list:
    """The requested models of an open file (default: all, file order); unknown ones refused."""
    available = _file_models(f)
    names = available if models is None else _split_names(models)
    unknown = [m for m in names if m not in available]
    if unknown:
        raise ScoreFileError(f"{source}: unknown model(s) {unknown} (missing key "
                             f"'{unknown[0]}/score_mat'); available: {available}")
    return names


def _row_reader(rows: Rows, n_probe: int, source: str):
    """Return ``read(dataset) -> ndarray`` selecting probe rows, plus the selected count.

    h5py fancy indexing needs strictly increasing indices, so an index array is read as its
    sorted unique rows and re-expanded in the caller's order.
    """
    if rows is None:
        return (lambda ds: ds[...]), n_probe
    if isinstance(rows, slice):
        n = len(range(*rows.indices(n_probe)))
        return (lambda ds: ds[rows]), n
    idx = np.asarray(rows)
    if idx.dtype.kind == "b":
        if idx.shape != (n_probe,):
            raise ScoreFileError(f"{source}: boolean rows mask has shape {idx.shape}, expected "
                                 f"({n_probe},)")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    idx = np.where(idx < 0, idx + n_probe, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= n_probe):
        raise ScoreFileError(f"{source}: row index out of range for {n_probe} probes")
    uniq, inverse = np.unique(idx, return_inverse=True)
    return (lambda ds: ds[uniq, ...][inverse]), int(idx.size)


def _read_ids(f, read_rows, source: str) -> dict:
    """The seven id arrays (int64); ``read_rows`` reads the probe-indexed ones. Without
    ``unique_g_pids`` (a training file, checked by :func:`_check_shapes`) the sorted distinct
    ``g_pids`` stand in."""
    ids = {}
    for key in ID_KEYS:
        if key == "unique_g_pids" and key not in f:
            ids[key] = np.unique(ids["g_pids"])
            continue
        data = read_rows(f[key]) if key in PROBE_ID_KEYS else f[key][...]
        ids[key] = _as_ids(data, key, source)
    return ids


def load_scores(path, models: Union[str, Sequence[str], None] = None,
                rows: Rows = None) -> ScoreSet:
    """Read a score file (docs/definitions.rst, §1) into a :class:`ScoreSet`.

    Parameters
    ----------
    path : str or PathLike
    models : list or "a,b", optional
        Models to read, in this order (default: all, in file order).
    rows : slice, int index array or bool mask ``(P,)``, optional
        Probe rows to read; only those rows of every probe-indexed dataset are read from disk.

    Raises
    ------
    ScoreFileError
        Missing file, not HDF5, missing key, length mismatch, non-integral or NaN ids.
    """
    source = os.fspath(path)
    with _reading(source) as f:
        names = _resolve_models(f, models, source)
        _check_shapes(_dataset_shapes(f, names), names, source)
        read, _ = _row_reader(rows, f["q_pids"].shape[0], source)
        ids = _read_ids(f, read, source)
        score_mats = {m: _float32(read(f[f"{m}/score_mat"]), f"{m}/score_mat", source)
                      for m in names}
        merge = {m: _float32(read(f[f"{m}/merge_score_mat"]), f"{m}/merge_score_mat", source)
                 for m in names if f"{m}/merge_score_mat" in f}
        quality = {}
        if QUALITY_GROUP in f:
            for name in f[QUALITY_GROUP]:
                key = f"{QUALITY_GROUP}/{name}"
                quality[name] = _float32(read(f[key]), key, source)
    return ScoreSet(models=list(names), score_mats=score_mats, merge_score_mats=merge,
                    quality=quality, **ids).validate(source)


def load_ids(path, models: Union[str, Sequence[str], None] = None) -> tuple:
    """``(models, ids, shapes)`` of a score file, checked like :func:`load_scores`, without
    reading any matrix (for out-of-core work with :func:`iter_row_blocks`).

    ``ids`` maps the seven id keys to int64 arrays; ``shapes`` maps every dataset key of the
    requested models and of ``quality/`` (``"face/score_mat"``, ``"quality/face_weights"``...)
    to its shape.
    """
    source = os.fspath(path)
    with _reading(source) as f:
        names = _resolve_models(f, models, source)
        shapes = _dataset_shapes(f, names)
        _check_shapes(shapes, names, source)
        ids = _read_ids(f, lambda ds: ds[...], source)
    return list(names), ids, shapes


def iter_row_blocks(path, model: str, block_rows: int,
                    key: str = "score_mat") -> Iterator[tuple]:
    """Stream ``{model}/{key}`` in blocks of ``block_rows`` probe rows.

    Yields ``(row_slice, block)`` with ``block`` float32 ``(rows in slice, G)``; only one block is
    in memory at a time (for matrices larger than RAM).
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    source = os.fspath(path)
    with _reading(source) as f:
        full = f"{model}/{key}"
        if full not in f:
            raise ScoreFileError(f"{source}: missing key '{full}'; models: {_file_models(f)}")
        ds = _checked_dataset(f, full, _MATRIX_KINDS, source)
        if ds.ndim != 2:
            raise ScoreFileError(f"{source}: key '{full}' must be 2-D, got shape {ds.shape}")
        for start in range(0, ds.shape[0], block_rows):
            sl = slice(start, min(start + block_rows, ds.shape[0]))
            yield sl, _float32(ds[sl], full, source)


def save_scores(path, scoreset: ScoreSet) -> None:
    """Write ``scoreset`` in the layout of docs/definitions.rst, §1 (plus the ``models`` attribute), atomically.

    The file is built in memory and written by :func:`write_atomic`: a temporary file in the
    destination folder replaces ``path`` only once complete and flushed; on any error (full
    disk: :class:`OutputError`) the temporary is removed and ``path`` is byte-identical.
    A new file gets the umask's mode, a replaced one keeps its mode. Arrays are written with
    their own dtypes, so ``load_scores(save_scores(s))`` is exact.
    """
    scoreset.validate()
    write_atomic(path, hdf5_image(lambda f: _write_scoreset(f, scoreset)))


def hdf5_image(fill, base: Optional[bytes] = None) -> bytes:
    """The bytes of an HDF5 file built in memory by ``fill(h5py.File)``, starting empty or
    from the file image ``base`` (opened read-write); for :func:`write_atomic`, so that h5py
    never writes to (and crashes on) a failing disk. Needs memory for the whole file."""
    import h5py
    buf = _bytes_io.BytesIO(base or b"")
    with h5py.File(buf, "r+" if base else "w") as f:
        fill(f)
    return buf.getvalue()


def _write_scoreset(f, scoreset: ScoreSet) -> None:
    f.attrs["models"] = ",".join(scoreset.models)
    for m in scoreset.models:
        f.create_dataset(f"{m}/score_mat", data=scoreset.score_mats[m])
        if m in scoreset.merge_score_mats:
            f.create_dataset(f"{m}/merge_score_mat", data=scoreset.merge_score_mats[m])
    for key, value in scoreset.ids().items():
        f.create_dataset(key, data=np.asarray(value))
    for name, arr in scoreset.quality.items():
        f.create_dataset(f"{QUALITY_GROUP}/{name}", data=arr)


# genuine/impostor pair files (bob, pyeer, CSV, numpy): qme_ext.io.pair_files
from .pair_files import Pairs, load_pairs  # noqa: E402,F401
# probe/gallery features files (HDF5, .npz, .npy folders): qme_ext.io.features
from .features import open_features  # noqa: E402,F401

__all__ += ["Pairs", "load_pairs", "open_features"]
