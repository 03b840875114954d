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
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import ScoreFileError

PAIR_FORMATS = ("auto", "bob4", "bob5", "scores", "csv", "npz", "npy")
LABEL_COLUMNS = ("label", "genuine", "is_genuine", "labels")
_TRUE = {"1", "true", "t", "yes", "y", "genuine", "1.0"}
_FALSE = {"0", "false", "f", "no", "n", "impostor", "0.0", "-1"}

__all__ = ["Pairs", "load_pairs", "score_list_format", "PAIR_FORMATS"]


@dataclass
class Pairs:
    """Genuine and impostor scores of one system (float64 vectors)."""

    genuine: np.ndarray
    impostor: np.ndarray
    name: str
    format: str


def _data_lines(path: str, limit: Optional[int] = None):
    with open(path) as fh:
        for line in fh:
            text = line.split("#", 1)[0].strip()
            if text:
                yield text
                if limit is not None:
                    limit -= 1
                    if limit == 0:
                        return


def _sniff(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".npz", ".npy", ".csv"):
        return ext[1:]
    first = next(_data_lines(path, 1), None)
    if first is None:
        raise ScoreFileError(f"{path}: no score in the file")
    n = len(first.split())
    if n in (4, 5):
        return f"bob{n}"
    if n == 1:
        return "scores"
    raise ScoreFileError(f"{path}: cannot tell the format from a line of {n} fields "
                         f"({first[:60]!r}); expected 4 (bob) or 5 (bob 5-column) fields or "
                         f"one score per line")


def score_list_format(path) -> bool:
    """True when ``path`` is a one-score-per-line list (one side of a genuine/impostor pair)."""
    path = os.fspath(path)
    if path.lower().endswith(".npy"):
        return np.load(path, mmap_mode="r").ndim == 1
    return _sniff(path) == "scores"


def _float(values, path: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError as exc:
        raise ScoreFileError(f"{path}: a score is not a number ({exc})") from None


def _bool_labels(values, path: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr
    if np.issubdtype(arr.dtype, np.number):
        if not np.isin(arr, (0, 1, -1)).all():
            raise ScoreFileError(f"{path}: labels must be 1 (genuine) or 0/-1 (impostor)")
        return arr == 1
    text = np.char.lower(np.char.strip(arr.astype(str)))
    bad = ~np.isin(text, list(_TRUE | _FALSE))
    if bad.any():
        raise ScoreFileError(f"{path}: unreadable label {text[bad][0]!r} (use 1/0 or true/false)")
    return np.isin(text, list(_TRUE))


def _split(scores: np.ndarray, genuine: np.ndarray, path: str, fmt: str, name) -> Pairs:
    return Pairs(scores[genuine], scores[~genuine], name, fmt)


def _read_scores(path: str) -> np.ndarray:
    return _float([line.split()[-1] for line in _data_lines(path)], path)


def _read_histogram(path: str) -> np.ndarray:
    counts = _float([line.split()[-1] for line in _data_lines(path)], path)
    if (counts < 0).any() or (counts != np.round(counts)).any():
        raise ScoreFileError(f"{path}: a histogram holds non-negative integer counts")
    return np.repeat(np.arange(counts.size, dtype=np.float64), counts.astype(np.int64))


def _read_bob(path: str, columns: int) -> tuple:
    rows = [line.split() for line in _data_lines(path)]
    bad = [i for i, r in enumerate(rows) if len(r) != columns]
    if bad:
        raise ScoreFileError(f"{path}: data line {bad[0] + 1} has {len(rows[bad[0]])} fields, "
                             f"expected {columns} (bob {columns}-column format)")
    real = 1 if columns == 4 else 2
    scores = _float([r[-1] for r in rows], path)
    genuine = np.array([r[0] == r[real] for r in rows], dtype=bool)
    return scores, genuine


def _read_csv(path: str) -> tuple:
    with open(path, newline="") as fh:
        sample = fh.read(4096)
        fh.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(fh, dialect=dialect)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        rows = list(reader)
    if "score" not in fields:
        raise ScoreFileError(f"{path}: no 'score' column (columns: {list(fields)})")
    scores = _float([r[fields["score"]] for r in rows], path)
    label = next((c for c in LABEL_COLUMNS if c in fields), None)
    if label is not None:
        return scores, _bool_labels([r[fields[label]] for r in rows], path)
    if "claimed_id" in fields and "real_id" in fields:
        return scores, np.array([r[fields["claimed_id"]] == r[fields["real_id"]] for r in rows])
    raise ScoreFileError(f"{path}: needs a label column ({', '.join(LABEL_COLUMNS)}) or "
                         f"claimed_id and real_id columns (columns: {list(fields)})")


def _read_npz(path: str) -> tuple:
    with np.load(path) as z:
        keys = set(z.files)
        if {"genuine", "impostor"} <= keys:
            return _float(z["genuine"], path).reshape(-1), _float(z["impostor"], path).reshape(-1)
        if {"scores", "labels"} <= keys:
            s = _float(z["scores"], path).reshape(-1)
            return _split(s, _bool_labels(z["labels"].reshape(-1), path), path, "npz", None)
    raise ScoreFileError(f"{path}: expected arrays 'genuine' and 'impostor' or 'scores' and "
                         f"'labels', found {sorted(keys)}")


def _read_npy(path: str):
    arr = np.load(path)
    if arr.dtype.names:
        if not {"score", "label"} <= set(arr.dtype.names):
            raise ScoreFileError(f"{path}: a structured array needs 'score' and 'label' fields")
        return _float(arr["score"], path), _bool_labels(arr["label"], path)
    if arr.ndim == 1:
        return _float(arr, path)
    if arr.ndim == 2 and arr.shape[1] == 2:
        return _float(arr[:, 0], path), _bool_labels(arr[:, 1], path)
    raise ScoreFileError(f"{path}: expected a (N, 2) array of (score, label) rows or a 1-D "
                         f"score list, got shape {arr.shape}")


def _one_side(path: str, fmt: str) -> np.ndarray:
    if fmt == "histogram":
        return _read_histogram(path)
    got = _read_npy(path) if path.lower().endswith(".npy") else _read_scores(path)
    if isinstance(got, tuple):
        raise ScoreFileError(f"{path}: holds labelled pairs, not a one-sided score list")
    return got


def load_pairs(path, impostor=None, *, format: str = "auto", impostor_format: str = "scores",
               name: Optional[str] = None) -> Pairs:
    """Genuine and impostor scores from ``path`` (module docstring for the formats).

    ``load_pairs("scores-dev")`` (bob 4/5-column), ``load_pairs("pairs.csv")``,
    ``load_pairs("s.npz")``, ``load_pairs("gen.txt", impostor="imp.txt")`` (pyeer lists;
    ``impostor_format="histogram"`` for pyeer's histogram impostor file). ``name``: the
    system's name (default: the file name). Raises :class:`~qme_ext.io.ScoreFileError`.
    """
    path = os.fspath(path)
    if format not in PAIR_FORMATS:
        raise ValueError(f"format: expected one of {list(PAIR_FORMATS)}, got {format!r}")
    if impostor_format not in ("scores", "histogram"):
        raise ValueError(f"impostor_format: expected 'scores' or 'histogram', got "
                         f"{impostor_format!r}")
    name = name or os.path.basename(path)
    if not os.path.exists(path):
        raise ScoreFileError(f"{path}: no such file")
    if impostor is not None:
        impostor = os.fspath(impostor)
        if not os.path.exists(impostor):
            raise ScoreFileError(f"{impostor}: no such file")
        return Pairs(_one_side(path, "scores"), _one_side(impostor, impostor_format), name,
                     "scores" if impostor_format == "scores" else "scores+histogram")
    fmt = _sniff(path) if format == "auto" else format
    if fmt == "scores":
        raise ScoreFileError(f"{path}: one score per line is one side only; give the genuine "
                             f"and the impostor file (load_pairs(gen, impostor=imp))")
    if fmt in ("bob4", "bob5"):
        got = _read_bob(path, int(fmt[-1]))
    elif fmt == "csv":
        got = _read_csv(path)
    elif fmt == "npz":
        got = _read_npz(path)
    else:
        got = _read_npy(path)
        if not isinstance(got, tuple):
            raise ScoreFileError(f"{path}: a 1-D array is one side only; give the genuine "
                                 f"and the impostor file")
    if isinstance(got, Pairs):
        got.name, got.format = name, fmt
        return got
    scores, second = got
    if second.dtype == np.bool_:
        return _split(scores, second, path, fmt, name)
    return Pairs(scores, second, name, fmt)
