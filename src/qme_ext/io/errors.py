"""The error of a score file that does not follow its layout (a ``ValueError``)."""


class ScoreFileError(ValueError):
    """A score file (or an in-memory ScoreSet) does not follow the SPEC §1 layout."""
