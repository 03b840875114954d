"""The errors of files: a score file that does not follow its layout (a ``ValueError``), and
an output file that could not be written (an ``OSError``)."""


class ScoreFileError(ValueError):
    """A score file (or an in-memory ScoreSet) does not follow the SPEC §1 layout."""


class OutputError(OSError):
    """An output file could not be written (full disk, quota, vanished folder); the target is
    left as it was. The message names the target, never the temporary."""
