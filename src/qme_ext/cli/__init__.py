"""The ``qme-ext`` command line (also ``python -m qme_ext``).

Subcommands
-----------
``evaluate FILE.h5``
    Evaluate every model of a score file (docs/definitions.rst, §1) and any fusion of them; print a table
    (percentages), optionally write all metric keys as JSON and PNG plots. With
    ``--max-memory SIZE`` the file is read in blocks of probe rows that fit SIZE (the same
    report, bit for bit; what SIZE covers: :mod:`qme_ext.streaming`); fusion then needs
    ``--calibration TRAIN.h5``, and ``--plots`` draws ROC/DET sampled at 64 log-spaced
    FARs (each point exact) from further passes over the file.
``evaluate-embeddings FEATURES``
    The same report from probe and gallery features (cosine, dot or euclidean), scored tile
    by tile in bounded memory (``--max-memory``); file layout: :mod:`qme_ext.io.features`.
``example FILE.h5``
    Write the built-in synthetic score file (:func:`qme_ext.datasets.make_example_scoreset`).

``verify FILE...``
    Verification metrics of genuine/impostor score files: bob 4/5-column, pyeer lists, CSV,
    numpy (:mod:`qme_ext.cli.verify`).

``train``, ``fuse``, ``demo``
    QME training, fusion with a checkpoint, and the end-to-end synthetic demo
    (:mod:`qme_ext.cli.qme`).

A subcommand is an entry of ``COMMANDS``: ``name -> (help, add_arguments(parser), run(args))``
and of ``FILES``: ``name -> CommandFiles`` (the options it reads and writes,
:mod:`qme_ext.cli.files`): no output of any command replaces one of its inputs.

Conventions: progress lines go to stderr (silenced by ``--quiet``); the table goes to stdout.
A user error (missing or malformed file, unknown model or fusion name, unusable option) exits
with status 2 and one line ``qme-ext: error: ...`` on stderr, without a traceback; anything
else is a bug and keeps its traceback. In the JSON output, NaN metric values become ``null``.
The ``--seed`` option is the evaluation protocol's split seed (45 in the paper); fusion rules
that search (``bssf``) use their own fixed seed (:func:`qme_ext.fusion.fuse` ``seed=0``).

Layer: the top; ``cli/`` may import every layer of the package except ``reference`` (the
oracle); ``evaluate``, ``qme``, ``verify`` hold one command group each and ``common`` what
they share. Nothing imports ``cli``.
"""
from __future__ import annotations

import argparse
import sys

from .._version import __version__
from . import files as _files
from .common import PROG, UserError
from .embeddings import COMMANDS as _EMBEDDINGS_COMMANDS
from .embeddings import FILES as _EMBEDDINGS_FILES
from .evaluate import COMMANDS as _EVALUATE_COMMANDS
from .evaluate import FILES as _EVALUATE_FILES
from .evaluate import TABLE_COLUMNS  # noqa: F401  (the evaluate table's columns)
from .qme import COMMANDS as _QME_COMMANDS
from .verify import COMMANDS as _VERIFY_COMMANDS
from .verify import FILES as _VERIFY_FILES


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text stays available through --help)."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message}\n")


COMMANDS = {
    **_EVALUATE_COMMANDS,
    **_EMBEDDINGS_COMMANDS,
    **_QME_COMMANDS,
    **_VERIFY_COMMANDS,
}

# {command: CommandFiles}: the files each command reads and writes (qme_ext.cli.files);
# main() refuses an output that is an input, and the writer refuses it again, for all
FILES = {
    **_EVALUATE_FILES,
    **_EMBEDDINGS_FILES,
    "train": _files.CommandFiles(inputs=("train", "val", "resume"),
                                 outputs=(("out", "file"), ("checkpoint", "file")),
                                 in_place=(("checkpoint", "resume"),)),
    "fuse": _files.CommandFiles(inputs=("model", "scores"), outputs=(("out", "file"),),
                                in_place=(("out", "scores"),)),
    "demo": _files.CommandFiles(outputs=(("out", "demo"),)),
    **_VERIFY_FILES,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Quality-aware biometric score fusion and "
                                            "evaluation (QME).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (help_text, add_arguments, _run) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    from ..io import ScoreFileError  # h5py on first use only
    from ..io.output import protected_inputs
    args = build_parser().parse_args(argv)
    try:
        spec = FILES[args.command]
        _files.check_outputs(spec, args)  # before any work or any other write
        with protected_inputs(_files.protected_paths(spec, args)):
            return COMMANDS[args.command][2](args)
    except (UserError, ScoreFileError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
