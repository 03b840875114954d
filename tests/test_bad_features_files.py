"""Issue 27: every reader of .npy/.npz/HDF5 members goes through the validation of the
score files (qme_ext.io.npy_files, the HDF5 dataset checks): object/pickled, empty,
truncated and garbage members, a .npy named .npz, HDF5 ids that are groups or dangling
links are each one line and exit 2, the folder byte-unchanged; the features reader is
fuzzed like the score and pair readers (hypothesis, profile of tests/conftest.py)."""
import io
import os

import h5py
import numpy as np
import pytest

from qme_ext import metrics
from qme_ext.io import ScoreFileError, open_features

from test_bad_input import _refused_unchanged


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return dict(probe_feats=rng.normal(size=(8, 4)).astype(np.float32),
                gallery_feats=rng.normal(size=(12, 4)).astype(np.float32),
                q_pids=np.arange(8) % 4, g_pids=np.arange(12) % 4)


def _npy_bytes(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _folder(tmp_path, member=None, data=None):
    d = tmp_path / "emb"
    d.mkdir()
    for k, v in _arrays().items():
        np.save(d / f"{k}.npy", v)
    if member is not None:
        (d / f"{member}.npy").write_bytes(data)
    return d


def _npz(tmp_path, member=None, data=None):
    import zipfile
    path = tmp_path / "emb.npz"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in _arrays().items():
            z.writestr(f"{k}.npy", data if k == member else _npy_bytes(v))
    return path


_OBJECT = _npy_bytes(np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
_GOOD = _npy_bytes(np.arange(8))
BAD_MEMBERS = {  # (bytes of member q_pids, what the line says)
    "object": (_OBJECT, "object array"),
    "empty": (b"", "no .npy header"),
    "truncated": (_GOOD[:-9], "truncated"),
    "garbage": (b"\x93NUMPY\x01\x00garbage" + bytes(40), "not a readable .npy array"),
    "text": (b"1\n2\n3\n", "no .npy header"),
    "strings": (_npy_bytes(np.array(["a"] * 8)), "integer or integral float ids"),
    "2-D ids": (_npy_bytes(np.zeros((8, 2), int)), "1-D id vector"),
}


@pytest.mark.parametrize("kind", ["npy", "npz"])
@pytest.mark.parametrize("bad", sorted(BAD_MEMBERS))
def test_bad_members_are_one_line(tmp_path, capsys, kind, bad):
    data, needle = BAD_MEMBERS[bad]
    path = (_folder if kind == "npy" else _npz)(tmp_path, "q_pids", data)
    _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", path], "q_pids", needle)
    with pytest.raises(ScoreFileError, match="q_pids"):
        with open_features(path) as f:
            f.arrays()


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_integer_features_are_refused(tmp_path, capsys, kind):
    data = _npy_bytes(np.zeros((8, 4), np.int32))
    path = (_folder if kind == "npy" else _npz)(tmp_path, "probe_feats", data)
    _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", path], "probe_feats",
                       "float16/float32/float64 features")


def test_a_npy_named_npz(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros(3))
    os.replace(tmp_path / "x.npy", tmp_path / "emb.npz")
    _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", tmp_path / "emb.npz"],
                       "a .npy array, not a .npz archive")
    (tmp_path / "g.npz").write_bytes(b"PK\x03\x04 not a zip")
    _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", tmp_path / "g.npz"],
                       "not a readable .npz archive")


def _h5(tmp_path, edit=None):
    path = tmp_path / "emb.h5"
    with h5py.File(path, "w") as f:
        for k, v in _arrays().items():
            f[k] = v
        if edit is not None:
            edit(f)
    return path


def _group(f):
    del f["g_pids"]
    f.create_group("g_pids")


def _dangling(f):
    del f["g_pids"]
    f["g_pids"] = h5py.SoftLink("/nowhere")


def _external(f):
    del f["q_pids"]
    f["q_pids"] = h5py.ExternalLink("missing.h5", "/q_pids")


@pytest.mark.parametrize("edit,key,needle", [(_group, "g_pids", "is a group"),
                                             (_dangling, "g_pids", "dangling link"),
                                             (_external, "q_pids", "dangling link")])
def test_hdf5_ids_that_are_groups_or_dangling_links(tmp_path, capsys, edit, key, needle):
    path = _h5(tmp_path, edit)
    _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", path], key, needle)


def test_hdf5_complex_features_and_huge_ids(tmp_path, capsys):
    def complex_feats(f):
        del f["gallery_feats"]
        f["gallery_feats"] = np.zeros((12, 4), np.complex64)

    def huge_ids(f):
        del f["g_pids"]
        f["g_pids"] = np.full(12, 2 ** 63, np.uint64)

    for edit, needle in ((complex_feats, "gallery_feats"), (huge_ids, "g_pids")):
        path = _h5(tmp_path, edit)
        _refused_unchanged(capsys, tmp_path, ["evaluate-embeddings", path], needle)
        path.unlink()


def test_one_reader_for_cli_and_api(tmp_path):
    """open_features gives exactly what evaluate_embeddings takes, for all three layouts."""
    want = None
    for kind in ("npy", "npz", "h5"):
        sub = tmp_path / kind
        sub.mkdir()
        path = {"npy": _folder, "npz": _npz, "h5": _h5}[kind](sub)
        with open_features(path) as f:
            rep = metrics.evaluate_embeddings(**f.arrays())
        want = want or rep
        assert rep["GR_mAP"] == want["GR_mAP"] and rep["TAR@1.00%FAR"] == want["TAR@1.00%FAR"]


# ------------------------------------------------------------------------------------------
# fuzz
# ------------------------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
NAMED = (ScoreFileError, ValueError, TypeError)


def _read(path):
    try:
        with open_features(path) as f:
            out = f.arrays()
    except NAMED:
        return None
    for k in ("probe_feats", "gallery_feats"):
        assert np.dtype(out[k].dtype).kind == "f" and len(out[k].shape) == 2
    for k in ("q_pids", "g_pids"):
        assert out[k].dtype == np.int64 and out[k].ndim == 1
    return out


def _mutated(data, image: bytes, size: int) -> tuple:
    """(how, bytes): random bytes, a truncation or one flipped byte of ``image``."""
    how = data.draw(st.sampled_from(["random", "truncated", "flipped"]))
    if how == "random":
        return how, data.draw(st.binary(max_size=size))
    if how == "truncated":
        return how, image[:data.draw(st.integers(0, len(image) - 1))]
    pos = data.draw(st.integers(0, len(image) - 1))
    return how, image[:pos] + bytes([image[pos] ^ data.draw(st.integers(1, 255))]) \
        + image[pos + 1:]


@hypothesis.given(data=st.data())
def test_fuzz_features_members_bytes_and_truncations(tmp_path_factory, data):
    key = data.draw(st.sampled_from(sorted(_arrays())))
    image = _npy_bytes(_arrays()[key])
    how, blob = _mutated(data, image, 512)
    d = tmp_path_factory.mktemp("featfuzz")
    path = (_folder if data.draw(st.booleans()) else _npz)(d, key, blob)
    got = _read(path)
    if how == "truncated":
        assert got is None


@hypothesis.given(data=st.data())
def test_fuzz_features_archive_bytes(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("npzfuzz")
    image = _npz(d).read_bytes()
    how, blob = _mutated(data, image, 1024)
    (d / "emb.npz").write_bytes(blob)
    _read(d / "emb.npz")


_DTYPES = ["f2", "f4", "f8", "i1", "i4", "u8", "?", "c8", "S6", [("a", "f4"), ("b", "i2")],
           "U3"]


@hypothesis.given(key=st.sampled_from(sorted(_arrays())),
                  dtype=st.sampled_from(range(len(_DTYPES))),
                  shape=st.lists(st.integers(0, 5), min_size=0, max_size=3),
                  layout=st.sampled_from(["npy", "npz", "h5"]))
def test_fuzz_features_dtypes_and_shapes(tmp_path_factory, key, dtype, shape, layout):
    dt = np.dtype(_DTYPES[dtype])
    arr = np.zeros(tuple(shape), dt)
    d = tmp_path_factory.mktemp("featdt")
    if layout == "h5":
        if dt.kind == "U":
            return  # numpy's "U" has no HDF5 type
        def edit(f):
            del f[key]
            f.create_dataset(key, data=arr)
        path = _h5(d, edit)
    else:
        path = (_folder if layout == "npy" else _npz)(d, key, _npy_bytes(arr))
    got = _read(path)
    if got is not None:
        assert dt.kind in ("f" if key.endswith("feats") else "iubf")


@pytest.mark.parametrize("link", ["soft", "external"])
def test_score_file_ids_that_are_dangling_links(tmp_path, capsys, link):
    from qme_ext.datasets import make_example_scoreset
    from qme_ext.io import save_scores
    path = tmp_path / "a.h5"
    save_scores(path, make_example_scoreset(num_probes=12, num_gallery=24, num_subjects=6,
                                            seed=1))
    with h5py.File(path, "r+") as f:
        del f["g_pids"]
        f["g_pids"] = (h5py.SoftLink("/nowhere") if link == "soft"
                       else h5py.ExternalLink("missing.h5", "/g_pids"))
    _refused_unchanged(capsys, tmp_path, ["evaluate", path], "g_pids")
    _refused_unchanged(capsys, tmp_path, ["evaluate", path, "--max-memory", "1MB"], "g_pids")


@hypothesis.given(data=st.data())
def test_fuzz_features_hdf5_truncations(tmp_path_factory, data):
    # truncations and random tails only: libhdf5 can segfault on flipped bytes (see
    # tests/test_bad_input.py), which no Python reader can catch
    d = tmp_path_factory.mktemp("h5featfuzz")
    image = _h5(d).read_bytes()
    if data.draw(st.booleans()):
        blob = image[:data.draw(st.integers(0, len(image) - 1))]
    else:
        blob = image[:8] + data.draw(st.binary(max_size=2048))
    (d / "emb.h5").write_bytes(blob)
    assert _read(d / "emb.h5") is None
