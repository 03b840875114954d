"""Which options of each ``qme-ext`` command are files read and files written (issue 27:
one rule for every output of every command, never an input).

Every command registers a :class:`CommandFiles` in its module's ``FILES`` table (merged in
``qme_ext.cli.FILES``; tests/test_output_rule.py fails for a command without one, and for
an option that looks like a path but is in neither list). :func:`main <qme_ext.cli.main>`
then, once per invocation and before the command does any work:

1. expands the inputs (:func:`input_paths`): each path option, every file of a folder of
   ``.npy`` features, and every image an ``--*-images`` list names;
2. refuses (one line, exit 2) every output that names an input (:func:`check_outputs`):
   the same resolved path (a symlink), the same inode (a hard link), or, for outputs whose
   names depend on the data (``score_hist_<row>.png``, ``ranked_lists_<row>.csv``), any
   existing file matching the name pattern that is an input;
3. registers the inputs with the one writer (:func:`qme_ext.io.output.protected_inputs`),
   which refuses at write time every target that is one, whatever wrote it.

An output may replace an input only where the command declares it (``in_place``):
``fuse --out TEST.h5`` updates the score file, ``train --checkpoint`` the ``--resume`` file.
"""
from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass

from .common import UserError

__all__ = ["CommandFiles", "PLOT_NAMES", "input_paths", "output_paths", "check_outputs",
           "protected_paths"]

# every PNG name a --plots / --out folder may receive (score_hist_<row>.png per row)
PLOT_NAMES = ("roc.png", "det.png", "cmc.png", "epc.png", "erc.png",
              "quality_vs_face_rank.png", "score_hist_*.png")


@dataclass(frozen=True)
class CommandFiles:
    """The path options of one command, by argparse ``dest``.

    ``inputs``: options naming files read (a path or a list of paths; ``None`` unset).
    ``folders``: input options that may be a folder of ``.npy`` members (each member read).
    ``image_lists``: input options naming a list of image paths (each image read).
    ``outputs``: ``{dest: kind}``; kind ``"file"`` (the path written), ``"plots"`` (a folder
    receiving :data:`PLOT_NAMES`), ``"demo"`` (a folder receiving results.json and the
    plots) or ``"prefix"`` (``PREFIX_<row>.csv`` and ``.png``, written when ``when`` is set).
    ``in_place``: ``(output dest, input dest)`` pairs that may name one file.
    ``when``: ``{output dest: dest}``: the output is written only when that option is set.
    """

    inputs: tuple = ()
    outputs: tuple = ()  # ((dest, kind), ...)
    folders: tuple = ()
    image_lists: tuple = ()
    in_place: tuple = ()
    when: tuple = ()  # ((output dest, option dest), ...)
    literals: tuple = ()  # ((dest, values that are no path), ...): --calibration self


def _values(args, dest, literals=()) -> list:
    v = getattr(args, dest, None)
    if v is None:
        return []
    skip = dict(literals).get(dest, ())
    return [os.fspath(x) for x in (v if isinstance(v, (list, tuple)) else [v])
            if x not in skip]


def _image_paths(path: str) -> list:
    """The images a --*-images list names (resolved as the list's reader resolves them);
    [] when the list cannot be read (its reader reports that)."""
    try:
        with open(path) as fh:
            lines = [line.strip() for line in fh]
    except (OSError, UnicodeDecodeError):
        return []
    base = os.path.dirname(os.path.abspath(path))
    return [os.path.join(base, s) for s in lines if s]


def input_paths(spec: CommandFiles, args) -> list:
    """[(dest, path)] of every file the command reads (folders expanded to members)."""
    out = []
    for dest in spec.inputs:
        for p in _values(args, dest, spec.literals):
            out.append((dest, p))
            if dest in spec.folders and os.path.isdir(p):
                out += [(dest, os.path.join(p, n)) for n in sorted(os.listdir(p))]
            if dest in spec.image_lists and os.path.isfile(p):
                out += [(dest, q) for q in _image_paths(p)]
    return out


def output_paths(spec: CommandFiles, args) -> list:
    """[(dest, option text, path or glob pattern)] of every file the command may write."""
    when = dict(spec.when)
    out = []
    for dest, kind in spec.outputs:
        if dest in when and getattr(args, when[dest], None) is None:
            continue
        option = "--" + dest.replace("_", "-")
        for p in _values(args, dest):
            if kind == "file":
                out.append((dest, option, p))
            elif kind in ("plots", "demo"):
                names = PLOT_NAMES + (("results.json",) if kind == "demo" else ())
                out += [(dest, f"{option} {p}:", os.path.join(p, n)) for n in names]
            elif kind == "prefix":
                out += [(dest, option, f"{p}_*{ext}") for ext in (".csv", ".png")]
            else:  # a kind without a rule is a bug of the table
                raise AssertionError(f"unknown output kind {kind!r}")
    return out


def _same(a: str, b: str) -> bool:
    from ..io.output import same_file
    return same_file(a, b)


def _pattern_hits(pattern: str, inputs: list):
    """The first input (dest, path) that the pattern output ``pattern`` could write: a name
    in the pattern's folder matching it (as given, or resolved), or an existing file
    matching it that is the input (a link). Each folder is listed once, each file stat-ed
    once, whatever the number of inputs (an image list may name thousands)."""
    from ..io.output import file_identity
    folder, name = os.path.split(pattern)
    real_folder, abs_folder = os.path.realpath(folder or "."), os.path.abspath(folder or ".")
    existing = {file_identity(c)
                for c in glob.glob(os.path.join(glob.escape(folder or "."), name))}
    reals = {r for r, _ in existing}
    inodes = {i for _, i in existing if i is not None}
    for dest, src in inputs:
        real, inode = file_identity(src)
        if ((os.path.dirname(real) == real_folder and fnmatch.fnmatch(os.path.basename(real),
                                                                      name))
                or (os.path.dirname(os.path.abspath(src)) == abs_folder
                    and fnmatch.fnmatch(os.path.basename(src), name))
                or real in reals or (inode is not None and inode in inodes)):
            return dest, src
    return None


def check_outputs(spec: CommandFiles, args) -> None:
    """:class:`UserError` (one line) when an output of the command names one of its
    inputs, except the declared ``in_place`` pairs; before anything is read or written."""
    inputs = input_paths(spec, args)
    allowed = set(spec.in_place)
    for out_dest, option, out in output_paths(spec, args):
        if any(c in os.path.basename(out) for c in "*?["):  # a name that depends on the data
            hit = _pattern_hits(out, inputs)
            if hit is not None:
                src = hit[1]
                _refuse(option, os.path.join(os.path.dirname(out), os.path.basename(src)), src)
            continue
        for in_dest, src in inputs:
            if (out_dest, in_dest) not in allowed and _same(out, src):
                _refuse(option, out, src)


def _refuse(option: str, out: str, src: str):
    raise UserError(f"{option} {out} is the input file {src}; refusing to overwrite an "
                    "input (choose another output name)")


def protected_paths(spec: CommandFiles, args) -> list:
    """The inputs the writer must refuse to replace: all but the targets of a declared
    in-place output (``fuse --out TEST.h5`` rewrites TEST.h5 atomically)."""
    outs = [(d, p) for d, _, p in output_paths(spec, args)]
    free = {src for (od, idest) in spec.in_place for d, p in outs if d == od
            for dest, src in input_paths(spec, args) if dest == idest and _same(p, src)}
    return [p for _, p in input_paths(spec, args) if p not in free]
