"""Issue 27: one rule for every output of every command: never an input, never through a
link onto one. The commands and their path options are read off the parser and the table
the commands register into (``qme_ext.cli.FILES``), so that a new command or a new output
option is enumerated here without anyone remembering to add it."""
import os

import numpy as np
import pytest

from qme_ext import cli
from qme_ext.cli import files as cli_files
from qme_ext.io import OutputError, write_atomic
from qme_ext.io.output import protected_inputs

from test_bad_input import _refused_unchanged, _snapshot

# argparse metavars / dests that name a path: an option that has one must be in the table
_PATHISH = ("FILE", "OUT", "DIR", "PATH", "PREFIX", ".h5", ".pt", "FEATURES")


def _subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sub.choices


def _actions(p):
    return [a for a in p._actions if a.dest not in ("help", "version")]


def test_every_command_registers_its_files():
    assert set(cli.FILES) == set(cli.COMMANDS) == set(_subparsers())


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_path_option_is_an_input_or_an_output(name):
    spec = cli.FILES[name]
    dests = {a.dest for a in _actions(_subparsers()[name])}
    declared = set(spec.inputs) | {d for d, _ in spec.outputs}
    assert declared <= dests, declared - dests
    for a in _actions(_subparsers()[name]):
        text = f"{a.metavar or ''} {a.dest}"
        if any(t in text for t in _PATHISH) or a.dest in ("file", "files"):
            assert a.dest in declared, f"{name}: option {a.dest} names a path but is in " \
                                       "neither the inputs nor the outputs of cli.FILES"


def _option(parser, dest):
    act = next(a for a in _actions(parser) if a.dest == dest)
    return act.option_strings[0] if act.option_strings else None


def _argv(name, values: dict, extra=()):
    """argv of command ``name`` with ``values[dest]`` set (positionals in parser order)."""
    p = _subparsers()[name]
    argv = [name]
    for a in _actions(p):
        if a.dest in values:
            opt = _option(p, a.dest)
            argv += ([opt] if opt else []) + [str(values[a.dest])]
    return argv + list(extra)


def _required(name, tmp_path) -> dict:
    """A file for every input option of ``name`` and a harmless value for required outputs."""
    spec = cli.FILES[name]
    vals = {}
    for d in spec.inputs:
        f = tmp_path / f"in_{d}.dat"
        f.write_bytes(b"input " + d.encode())
        vals[d] = f
    for d, kind in spec.outputs:
        vals[d] = tmp_path / (f"out_{d}" if kind != "prefix" else f"pre_{d}")
    return vals


def _cases():
    for name in sorted(cli.COMMANDS):
        spec = cli.FILES[name]
        for out, kind in spec.outputs:
            for src in spec.inputs:
                if (out, src) in spec.in_place:
                    continue
                yield name, out, kind, src


@pytest.mark.parametrize("name,out,kind,src", list(_cases()))
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_no_output_of_any_command_replaces_any_input(tmp_path, capsys, name, out, kind, src,
                                                     how):
    spec = cli.FILES[name]
    vals = _required(name, tmp_path)
    extra = [f"--{w.replace('_', '-')}" for o, w in spec.when if o == out]
    extra = [e for w in extra for e in (w, "1")]
    target = vals[src]
    if kind == "file":
        place = target
    elif kind == "prefix":
        vals[out] = tmp_path / "pre"
        place = tmp_path / "pre_face.csv"
    else:  # a folder of plots: the input named like one of them
        vals[out] = tmp_path / "plots"
        (tmp_path / "plots").mkdir()
        place = tmp_path / "plots" / "score_hist_face.png"
    if place != target:
        os.replace(target, place)
        vals[src] = place
    if how != "same":
        link = (place.parent / ("l_" + place.name)) if kind != "file" else tmp_path / "link"
        (os.symlink if how == "symlink" else os.link)(place, link)
        if kind == "file":
            vals[out] = link
        else:  # the input given through the link, the output named like the real file
            vals[src] = link
    elif kind == "file":
        vals[out] = place
    _refused_unchanged(capsys, tmp_path, _argv(name, vals, extra), "is the input file",
                       "refusing to overwrite an input")


def test_in_place_outputs_stay_allowed_only_where_declared():
    assert set(cli.FILES["fuse"].in_place) == {("out", "scores")}
    assert set(cli.FILES["train"].in_place) == {("checkpoint", "resume")}
    assert all(not spec.in_place for n, spec in cli.FILES.items() if n not in ("fuse", "train"))


def test_the_writer_refuses_a_registered_input(tmp_path):
    src = tmp_path / "in.h5"
    src.write_bytes(b"data")
    os.symlink(src, tmp_path / "sym")
    os.link(src, tmp_path / "hard")
    with protected_inputs([src]):
        for target in (src, tmp_path / "sym", tmp_path / "hard"):
            with pytest.raises(OutputError, match="refusing to overwrite an input"):
                write_atomic(target, b"x")
        write_atomic(tmp_path / "other", b"x")  # anything else is written
    write_atomic(tmp_path / "sym", b"new")  # outside a command: the plain writer
    assert src.read_bytes() == b"new"


# ------------------------------------------------------------------------------------------
# the rows
# ------------------------------------------------------------------------------------------
def _features(folder, kind):
    rng = np.random.default_rng(0)
    arrays = dict(probe_feats=rng.normal(size=(8, 4)).astype(np.float32),
                  gallery_feats=rng.normal(size=(12, 4)).astype(np.float32),
                  q_pids=np.arange(8) % 4, g_pids=np.arange(12) % 4)
    if kind == "npz":
        np.savez(folder / "emb.npz", **arrays)
        return folder / "emb.npz"
    if kind == "h5":
        import h5py
        with h5py.File(folder / "emb.h5", "w") as f:
            for k, v in arrays.items():
                f[k] = v
        return folder / "emb.h5"
    (folder / "emb").mkdir()
    for k, v in arrays.items():
        np.save(folder / "emb" / f"{k}.npy", v)
    return folder / "emb"


@pytest.mark.parametrize("kind", ["h5", "npz", "npy"])
@pytest.mark.parametrize("quiet", [True, False])
def test_evaluate_embeddings_json_onto_its_input(tmp_path, capsys, kind, quiet):
    path = _features(tmp_path, kind)
    q = ["--quiet"] if quiet else []
    targets = [path] if kind != "npy" else [path / "q_pids.npy", path / "probe_feats.npy"]
    for t in targets:
        _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", path, "--json", t] + q,
                           "is the input file")
    os.symlink(targets[0], tmp_path / "link.json")
    _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", path, "--json",
                                          tmp_path / "link.json"] + q, "is the input file")


def test_ranked_lists_never_write_over_an_input_or_an_image_list(tmp_path, capsys):
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    ss = make_example_scoreset(num_probes=12, num_gallery=24, num_subjects=6, seed=1)
    row = ss.models[0]
    path = tmp_path / f"ranked_lists_{row}.csv"
    save_scores(path, ss)
    pre = ["--ranked-prefix", tmp_path / "ranked_lists"]
    _refused_unchanged(capsys, tmp_path, ["evaluate", path, "--ranked-lists", "1", "--quiet"]
                       + pre, "is the input file")
    good = tmp_path / "a.h5"
    save_scores(good, ss)
    images = tmp_path / f"ranked_lists_{row}.png"
    images.write_text("\n" * 24)
    _refused_unchanged(capsys, tmp_path, ["evaluate", good, "--ranked-lists", "1",
                                          "--gallery-images", images, "--quiet"] + pre,
                       "is the input file")
    # an image the list names is an input too
    (tmp_path / "img.png").write_bytes(b"png")
    lst = tmp_path / "g.txt"
    lst.write_text("img.png\n" * 24)
    _refused_unchanged(capsys, tmp_path, ["evaluate", good, "--gallery-images", lst,
                                          "--ranked-lists", "1", "--json", tmp_path / "img.png",
                                          "--quiet"], "img.png")


def test_check_outputs_runs_before_the_command(tmp_path, monkeypatch, capsys):
    """The refusal comes from main() before the command runs (no progress line at all)."""
    called = []
    monkeypatch.setitem(cli.COMMANDS, "verify", (cli.COMMANDS["verify"][0],
                                                 cli.COMMANDS["verify"][1],
                                                 lambda args: called.append(1) or 0))
    g = tmp_path / "g.txt"
    g.write_text("1\n")
    before = _snapshot(tmp_path)
    assert cli.main(["verify", str(g), str(g), "--json", str(g)]) == 2
    assert not called and _snapshot(tmp_path) == before
    assert "is the input file" in capsys.readouterr().err


def test_output_patterns_cover_every_plot_name():
    from qme_ext import plots
    import fnmatch
    names = plots.curve_plot_names(["face", "zscore:max"]) + ["epc.png", "erc.png",
                                                              "quality_vs_face_rank.png"]
    for n in names:
        assert any(fnmatch.fnmatch(n, p) for p in cli_files.PLOT_NAMES), n
