"""The one validation of ``.npy`` arrays and ``.npz`` members that every reader of qme_ext
uses (pair files, features files; issue 27): an array is read only after its header is
checked against the bytes present, so that an object (pickled) array is never loaded, a
truncated or corrupt file is one :class:`ScoreFileError` naming the file (and the member),
and a corrupt header never asks numpy for terabytes.
"""
from __future__ import annotations

import io
import os
import zipfile
from typing import Optional

import numpy as np

from .errors import ScoreFileError

__all__ = ["NPY_MAGIC", "ZIP_MAGICS", "npy_array", "npy_memmap", "npz_members", "npz_array"]

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def _where(path: str, key: Optional[str]) -> str:
    return f"{path}" + (f" (array '{key}')" if key else "")


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _header(fp, available: int, where: str) -> tuple:
    """(shape, fortran, dtype, data offset) of the ``.npy`` stream ``fp`` of ``available``
    bytes; ScoreFileError for an object array or fewer data bytes than the header says."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        raise ScoreFileError(f"{where}: an object array (pickled Python objects), expected "
                             f"numbers; object arrays are never loaded")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > available - fp.tell():
        raise ScoreFileError(f"{where}: truncated: the header announces shape {shape} "
                             f"({dtype}), {need} bytes, the file holds "
                             f"{available - fp.tell()}")
    return shape, fortran, dtype, fp.tell()


def npy_array(data: bytes, path: str, key: Optional[str] = None) -> np.ndarray:
    """The array of a ``.npy`` image ``data`` (checked first, module docstring)."""
    where = _where(path, key)
    if not data.startswith(NPY_MAGIC):
        raise ScoreFileError(f"{where}: not a readable .npy array (no .npy header"
                             + ("; empty" if not data else "") + ")")
    fp = io.BytesIO(data)
    try:
        _header(fp, len(data), where)
        fp.seek(0)
        return np.load(fp, allow_pickle=False)
    except ScoreFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy parses an untrusted header with ast and
        # tokenize, whose errors (TokenError, SyntaxError, RecursionError...) are no
        # ValueError; in this block every one of them means a corrupt file
        raise ScoreFileError(f"{where}: not a readable .npy array ({_message(exc)})") from None


def npy_memmap(path: str, key: Optional[str] = None) -> np.ndarray:
    """A read-only memory map of the ``.npy`` file ``path`` (checked first; the data stay
    on disk)."""
    where = _where(path, key)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise ScoreFileError(f"{where}: not a readable .npy array (no .npy header"
                                     + ("; empty" if size == 0 else "") + ")")
            fh.seek(0)
            shape, fortran, dtype, offset = _header(fh, size, where)
        if int(np.prod(shape, dtype=object)) == 0:
            return np.zeros(shape, dtype)  # numpy cannot map zero bytes
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    except ScoreFileError:
        raise
    except MemoryError:
        raise ScoreFileError(f"{where}: too large to map into memory") from None
    except Exception as exc:  # noqa: BLE001 - as npy_array
        raise ScoreFileError(f"{where}: not a readable .npy array ({_message(exc)})") from None


def npz_members(data: bytes, path: str) -> dict:
    """{key: member name} of a ``.npz`` image; ScoreFileError when it is none (a ``.npy``
    named ``.npz`` is told apart)."""
    if data.startswith(NPY_MAGIC):
        raise ScoreFileError(f"{path}: a .npy array, not a .npz archive (rename it .npy)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {n[:-4] if n.endswith(".npy") else n: n for n in z.namelist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as exc:
        raise ScoreFileError(f"{path}: not a readable .npz archive ({_message(exc)})") \
            from None


def npz_array(data: bytes, path: str, key: str, name: Optional[str] = None) -> np.ndarray:
    """Member ``key`` (archive name ``name``, default ``key + '.npy'``) of a ``.npz`` image,
    through :func:`npy_array`."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            raw = z.read(name or key + ".npy")
    except MemoryError:
        raise ScoreFileError(f"{path}: an array of the .npz archive is too large for memory") \
            from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError) as exc:
        raise ScoreFileError(f"{path}: not a readable .npz archive ({_message(exc)})") \
            from None
    return npy_array(raw, path, key)
