"""The errors of files: a score file that does not follow its layout (a ``ValueError``), and
an output file that could not be written (an ``OSError``); the first check of an input path."""
import os


class ScoreFileError(ValueError):
    """A score file (or an in-memory ScoreSet) does not follow the layout of docs/definitions.rst, §1."""


def input_path(path, expected: str) -> str:
    """``path`` as a string if something readable may be there; ScoreFileError when it is
    missing or a directory (``expected`` names what should be there, e.g. "an HDF5 file")."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ScoreFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ScoreFileError(f"{path}: is a directory, expected {expected}")
    return path


class OutputError(OSError):
    """An output file could not be written (full disk, quota, vanished folder); the target is
    left as it was. The message names the target, never the temporary."""
