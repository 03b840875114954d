"""Genuine/impostor score files of the verification ecosystem (:func:`qme_ext.io.load_pairs`).

Formats (``format="auto"`` picks one from the extension and the first data line):

``bob4``      bob.measure 4-column text: ``claimed_id real_id probe_label score``
``bob5``      bob.measure 5-column text: ``claimed_id model_label real_id probe_label score``
              (genuine where ``claimed_id == real_id``; ``#`` starts a comment)
``scores``    pyeer: one score per line (the last whitespace-separated token of a line); a
              genuine file and an impostor file, ``load_pairs(gen, impostor=imp)``
``histogram`` pyeer's integer-histogram impostor file (``impostor_format="histogram"``):
              line i holds how many impostor scores equal the integer i (expanded to scores)
``csv``       a header row naming a ``score`` column and either a ``label``/``genuine``/
              ``is_genuine`` column (1/0, true/false) or ``claimed_id`` and ``real_id``
``npz``       arrays ``genuine`` and ``impostor``, or ``scores`` and ``labels``
``npy``       a (N, 2) array of ``(score, label)`` rows, a structured array with ``score`` and
              ``label`` fields, or a 1-D score list (then like ``scores``)

Scores are returned as float64; higher = more alike (negate distances first).

Reading (issue 23): every file is read once, into memory, and sniffed and parsed from that
buffer, so a pipe or FIFO (``verify <(cat gen.txt) <(cat imp.txt)``) gives all its scores.
Binary formats are told by their content (``.npy`` magic, zip, HDF5), text by the extension
(``.csv``) and the first data line. Every problem is one :class:`ScoreFileError` naming the
file: binary or UTF-16 text where text is expected, an HDF5 file (score matrices belong to
``qme-ext evaluate``), unreadable, object-dtype or truncated numpy files, complex, bool or
string score arrays (integer and float scores are accepted, as ``verification`` accepts
them), a histogram count that is not a finite non-negative integer or a histogram of more
than :data:`MAX_HISTOGRAM_SCORES` scores, and in a CSV file a score cell that is empty or
missing (a short row): both are the same error naming the line, never a NaN score (write
``nan`` to mean one).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from .errors import ScoreFileError, input_path
from .npy_files import NPY_MAGIC as _NPY_MAGIC
from .npy_files import ZIP_MAGICS as _ZIP_MAGICS
from .npy_files import npy_array, npz_array, npz_members

PAIR_FORMATS = ("auto", "bob4", "bob5", "scores", "csv", "npz", "npy")
LABEL_COLUMNS = ("label", "genuine", "is_genuine", "labels")
_TRUE = {"1", "true", "t", "yes", "y", "genuine", "1.0"}
_FALSE = {"0", "false", "f", "no", "n", "impostor", "0.0", "-1"}
# a histogram expands to this many float64 scores at most (8 GiB): larger totals are refused
MAX_HISTOGRAM_SCORES = 2 ** 30
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SCORE_KINDS = "iuf"  # what verification() takes as scores

__all__ = ["Pairs", "PairSource", "read_pair_source", "load_pairs", "score_list_format",
           "PAIR_FORMATS", "MAX_HISTOGRAM_SCORES"]


@dataclass
class Pairs:
    """Genuine and impostor scores of one system (float64 vectors)."""

    genuine: np.ndarray
    impostor: np.ndarray
    name: str
    format: str


@dataclass
class PairSource:
    """The bytes of one score file, read once (a pipe cannot be read twice)."""

    path: str
    data: bytes


def read_pair_source(path) -> PairSource:
    """Read ``path`` (a file, FIFO or ``/dev/fd/N``) whole; :class:`ScoreFileError` when it
    cannot be read. :func:`load_pairs` and :func:`score_list_format` take the result in place
    of a path."""
    if isinstance(path, PairSource):
        return path
    path = input_path(path, "a score file")
    try:
        with open(path, "rb") as fh:
            return PairSource(path, fh.read())
    except OSError as exc:
        raise ScoreFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise ScoreFileError(f"{path}: too large to read into memory") from None


def _text(src: PairSource) -> str:
    """The file as text: UTF-8 (a BOM is skipped); binary and UTF-16 files are refused."""
    data, path = src.data, src.path
    if data.startswith(_HDF5_MAGIC):
        raise ScoreFileError(f"{path}: an HDF5 file, not a genuine/impostor score file (score "
                             f"matrices are read by 'qme-ext evaluate')")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ScoreFileError(f"{path}: UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 "
                             f"-t UTF-8)")
    if b"\x00" in data:
        raise ScoreFileError(f"{path}: a binary file (NUL bytes), expected a text score file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ScoreFileError(f"{path}: not UTF-8 text (byte {exc.start}); a binary file?") \
            from None


def _data_lines(src: PairSource, limit: Optional[int] = None) -> list:
    out = []
    for line in _text(src).splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(text)
            if limit is not None and len(out) == limit:
                break
    return out


def _binary_format(src: PairSource) -> Optional[str]:
    if src.data.startswith(_NPY_MAGIC):
        return "npy"
    if src.data.startswith(_ZIP_MAGICS):
        return "npz"
    return None


def _sniff(src: PairSource) -> str:
    ext = os.path.splitext(src.path)[1].lower()
    fmt = _binary_format(src)
    if fmt is not None:
        return fmt
    if ext in (".npz", ".npy"):
        raise ScoreFileError(f"{src.path}: not a numpy {ext} file (no {ext} header)")
    if ext == ".csv":
        return "csv"
    lines = _data_lines(src, 1)
    if not lines:
        raise ScoreFileError(f"{src.path}: no score in the file")
    n = len(lines[0].split())
    if n in (4, 5):
        return f"bob{n}"
    if n == 1:
        return "scores"
    raise ScoreFileError(f"{src.path}: cannot tell the format from a line of {n} fields "
                         f"({lines[0][:60]!r}); expected 4 (bob) or 5 (bob 5-column) fields or "
                         f"one score per line")


def score_list_format(path: Union[str, os.PathLike, PairSource]) -> bool:
    """True when ``path`` (or a :class:`PairSource`) is a one-score-per-line list (one side of
    a genuine/impostor pair), or a 1-D ``.npy`` score vector."""
    src = read_pair_source(path)
    fmt = _sniff(src)
    if fmt == "npy":
        return npy_array(src.data, src.path).ndim == 1
    return fmt == "scores"


def _float(values, path: str) -> np.ndarray:
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and (arr.dtype.kind not in _SCORE_KINDS or arr.dtype.names):
        raise ScoreFileError(f"{path}: scores have dtype {arr.dtype}, expected integer or "
                             f"floating-point numbers")
    try:
        return np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise ScoreFileError(f"{path}: a score is not a number ({exc})") from None


def _bool_labels(values, path: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iuf":
        if not np.isin(arr, (0, 1, -1)).all():
            raise ScoreFileError(f"{path}: labels must be 1 (genuine) or 0/-1 (impostor)")
        return arr == 1
    if arr.dtype.kind not in "US":
        raise ScoreFileError(f"{path}: labels have dtype {arr.dtype}, expected bool, 1/0 or "
                             f"true/false")
    text = np.char.lower(np.char.strip(arr.astype(str)))
    bad = ~np.isin(text, list(_TRUE | _FALSE))
    if bad.any():
        raise ScoreFileError(f"{path}: unreadable label {text[bad][0]!r} (use 1/0 or true/false)")
    return np.isin(text, list(_TRUE))


def _split(scores: np.ndarray, genuine: np.ndarray, path: str, fmt: str, name) -> Pairs:
    return Pairs(scores[genuine], scores[~genuine], name, fmt)


def _read_scores(src: PairSource) -> np.ndarray:
    return _float([line.split()[-1] for line in _data_lines(src)], src.path)


def _read_histogram(src: PairSource) -> np.ndarray:
    path = src.path
    counts = _float([line.split()[-1] for line in _data_lines(src)], path)
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts != np.round(counts)).any():
        raise ScoreFileError(f"{path}: a histogram holds finite non-negative integer counts")
    total = float(counts.sum())
    if total > MAX_HISTOGRAM_SCORES:
        raise ScoreFileError(f"{path}: the histogram counts {total:.6g} scores, more than "
                             f"{MAX_HISTOGRAM_SCORES} can be expanded in memory")
    return np.repeat(np.arange(counts.size, dtype=np.float64), counts.astype(np.int64))


def _read_bob(src: PairSource, columns: int) -> tuple:
    path = src.path
    rows = [line.split() for line in _data_lines(src)]
    bad = [i for i, r in enumerate(rows) if len(r) != columns]
    if bad:
        raise ScoreFileError(f"{path}: data line {bad[0] + 1} has {len(rows[bad[0]])} fields, "
                             f"expected {columns} (bob {columns}-column format)")
    real = 1 if columns == 4 else 2
    scores = _float([r[-1] for r in rows], path)
    genuine = np.array([r[0] == r[real] for r in rows], dtype=bool)
    return scores, genuine


def _cells(rows: list, column: str, what: str, path: str) -> list:
    """The ``column`` cells of CSV ``rows`` ([(line, dict)]); an empty cell and a cell missing
    from a short row are the same error."""
    out = []
    for line, row in rows:
        value = row.get(column)
        if value is None or not value.strip():
            hint = "; write nan for a missing score" if what == "score" else ""
            raise ScoreFileError(f"{path}: line {line} has no {what} (an empty or missing "
                                 f"'{column}' cell{hint})")
        out.append(value)
    return out


def _read_csv(src: PairSource) -> tuple:
    path = src.path
    text = _text(src)
    try:
        try:
            dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        rows = [(reader.line_num, r) for r in reader]
    except csv.Error as exc:
        raise ScoreFileError(f"{path}: not a readable CSV file ({exc})") from None
    if "score" not in fields:
        raise ScoreFileError(f"{path}: no 'score' column (columns: {list(fields)})")
    scores = _float(_cells(rows, fields["score"], "score", path), path)
    label = next((c for c in LABEL_COLUMNS if c in fields), None)
    if label is not None:
        return scores, _bool_labels(_cells(rows, fields[label], "label", path), path)
    if "claimed_id" in fields and "real_id" in fields:
        claimed = _cells(rows, fields["claimed_id"], "claimed_id", path)
        real = _cells(rows, fields["real_id"], "real_id", path)
        return scores, np.array([c == r for c, r in zip(claimed, real)], dtype=bool)
    raise ScoreFileError(f"{path}: needs a label column ({', '.join(LABEL_COLUMNS)}) or "
                         f"claimed_id and real_id columns (columns: {list(fields)})")


def _npz_arrays(src: PairSource, keys: tuple) -> Optional[list]:
    """The arrays ``keys`` of a ``.npz`` image, or None when it lacks one of them."""
    names = npz_members(src.data, src.path)
    if not set(keys) <= set(names):
        return None
    return [npz_array(src.data, src.path, k, names[k]) for k in keys]


def _read_npz(src: PairSource):
    path = src.path
    got = _npz_arrays(src, ("genuine", "impostor"))
    if got is not None:
        return _float(got[0], path).reshape(-1), _float(got[1], path).reshape(-1)
    got = _npz_arrays(src, ("scores", "labels"))
    if got is not None:
        s = _float(got[0], path).reshape(-1)
        labels = got[1].reshape(-1)
        if labels.size != s.size:
            raise ScoreFileError(f"{path}: {labels.size} labels for {s.size} scores")
        return _split(s, _bool_labels(labels, path), path, "npz", None)
    found = sorted(npz_members(src.data, path))
    raise ScoreFileError(f"{path}: expected arrays 'genuine' and 'impostor' or 'scores' and "
                         f"'labels', found {found}")


def _read_npy(src: PairSource):
    path = src.path
    arr = npy_array(src.data, path)
    if arr.dtype.names:
        if not {"score", "label"} <= set(arr.dtype.names) or arr.ndim != 1:
            raise ScoreFileError(f"{path}: a structured array needs 'score' and 'label' fields "
                                 f"(1-D), got fields {arr.dtype.names} and shape {arr.shape}")
        return _float(arr["score"], path), _bool_labels(arr["label"], path)
    if arr.ndim == 1:
        return _float(arr, path)
    if arr.ndim == 2 and arr.shape[1] == 2:
        return _float(arr[:, 0], path), _bool_labels(arr[:, 1], path)
    raise ScoreFileError(f"{path}: expected a (N, 2) array of (score, label) rows or a 1-D "
                         f"score list, got shape {arr.shape}")


def _one_side(src: PairSource, fmt: str) -> np.ndarray:
    if fmt == "histogram":
        return _read_histogram(src)
    got = _read_npy(src) if _sniff(src) == "npy" else _read_scores(src)
    if isinstance(got, tuple):
        raise ScoreFileError(f"{src.path}: holds labelled pairs, not a one-sided score list")
    return got


def load_pairs(path, impostor=None, *, format: str = "auto", impostor_format: str = "scores",
               name: Optional[str] = None) -> Pairs:
    """Genuine and impostor scores from ``path`` (module docstring for the formats).

    ``load_pairs("scores-dev")`` (bob 4/5-column), ``load_pairs("pairs.csv")``,
    ``load_pairs("s.npz")``, ``load_pairs("gen.txt", impostor="imp.txt")`` (pyeer lists;
    ``impostor_format="histogram"`` for pyeer's histogram impostor file). ``name``: the
    system's name (default: the file name). ``path`` and ``impostor`` may be paths or
    :class:`PairSource` objects (a file already read). Each file is read once. Raises
    :class:`~qme_ext.io.ScoreFileError`.
    """
    if format not in PAIR_FORMATS:
        raise ValueError(f"format: expected one of {list(PAIR_FORMATS)}, got {format!r}")
    if impostor_format not in ("scores", "histogram"):
        raise ValueError(f"impostor_format: expected 'scores' or 'histogram', got "
                         f"{impostor_format!r}")
    src = read_pair_source(path)
    path = src.path
    name = name or os.path.basename(path)
    if impostor is not None:
        imp = read_pair_source(impostor)
        return Pairs(_one_side(src, "scores"), _one_side(imp, impostor_format), name,
                     "scores" if impostor_format == "scores" else "scores+histogram")
    fmt = _sniff(src) if format == "auto" else format
    if fmt == "scores":
        raise ScoreFileError(f"{path}: one score per line is one side only; give the genuine "
                             f"and the impostor file (load_pairs(gen, impostor=imp))")
    if fmt in ("bob4", "bob5"):
        got = _read_bob(src, int(fmt[-1]))
    elif fmt == "csv":
        got = _read_csv(src)
    elif fmt == "npz":
        got = _read_npz(src)
    else:
        got = _read_npy(src)
        if not isinstance(got, tuple):
            raise ScoreFileError(f"{path}: a 1-D array is one side only; give the genuine "
                                 f"and the impostor file")
    if isinstance(got, Pairs):
        got.name, got.format = name, fmt
        return got
    scores, second = got
    if second.dtype == np.bool_:
        if second.size != scores.size:
            raise ScoreFileError(f"{path}: {second.size} labels for {scores.size} scores")
        return _split(scores, second, path, fmt, name)
    return Pairs(scores, second, name, fmt)
