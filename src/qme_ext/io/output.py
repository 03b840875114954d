"""The one way every output file of qme_ext is written (issue 23: nothing is ever destroyed).

:func:`atomic_output` yields a temporary path in the target's folder; when the block ends
without error the temporary is flushed to disk (``fsync``) and renamed over the target, so
the target name only ever holds the old file or the complete new one. On any error (a full
disk, a quota, a killed write) the temporary is removed and the old target is byte-identical.

:func:`write_atomic` writes a ``bytes``/``str`` image through it. Writers whose library
crashes on a failing file (h5py segfaults in ``File.close`` when ``ulimit -f`` is hit) or
guesses a format from the file name (matplotlib) build the file in memory and hand the
bytes here, so that a failing write is one Python ``OSError``.

Modes: a new file gets the mode the umask gives (``0o666 & ~umask``, like ``open(path,
"w")``); replacing an existing file keeps that file's mode.

:func:`same_file` tells whether two paths name one file (realpath, or the same inode for
hard links), for the command line's refusal to write over its own inputs.

The inputs rule (issue 27): :func:`protected_inputs` registers the files a command reads
(the command line sets it once per invocation, from the table of
:mod:`qme_ext.cli.files`); while it is set, :func:`atomic_output` refuses (an
:class:`OutputError`, before creating anything) every target that is one of them: the same
resolved path (a symlink onto it), the same inode (a hard link), or a link through which
the write would land on it. The one writer enforces the rule, so no command can forget it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from .errors import OutputError

__all__ = ["atomic_output", "write_atomic", "same_file", "OutputError", "protected_inputs",
           "file_identity", "refuse_input"]

# the inputs of the running command: [(shown path, realpath, (st_dev, st_ino) or None)]
_PROTECTED: list = []


def file_identity(path: str) -> tuple:
    """(realpath, (st_dev, st_ino) of a regular file or None): what names one file."""
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
        inode = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        inode = None
    return real, inode


@contextlib.contextmanager
def protected_inputs(paths):
    """While the block runs, :func:`atomic_output` refuses to write over any of ``paths``
    (None entries skipped; identities taken now, so a later rename cannot hide one)."""
    entries = [(os.fspath(p),) + file_identity(os.fspath(p)) for p in paths if p is not None]
    saved = list(_PROTECTED)
    _PROTECTED[:] = saved + entries
    try:
        yield
    finally:
        _PROTECTED[:] = saved


def refuse_input(path, option: str = "") -> None:
    """:class:`OutputError` when ``path`` would write over a registered input."""
    if not _PROTECTED:
        return
    path = os.fspath(path)
    real, inode = file_identity(path)
    for shown, src_real, src_inode in _PROTECTED:
        if real == src_real or (inode is not None and inode == src_inode):
            what = f"{option} {path}" if option else path
            raise OutputError(f"{what} is the input file {shown}; refusing to overwrite an "
                              "input (choose another output name)")


def _create_temporary(path: str) -> str:
    """A new empty file beside ``path`` (mode from the umask, or ``path``'s own mode)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None  # a new target: os.open applies the umask to 0o666
    for _ in range(100):
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return tmp
    raise OutputError(f"cannot write {path}: no free temporary name in {folder}")


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(path: str) -> None:
    """Make the rename durable; folders that cannot be opened or synced are skipped."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path):
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The caller writes the whole file to the yielded path (and closes it). On any error,
    including one raised by the caller, the temporary is removed and ``path`` is untouched;
    an ``OSError`` of the final flush or rename becomes an :class:`OutputError` naming
    ``path`` (not the temporary).
    """
    path = os.fspath(path)
    refuse_input(path)
    if os.path.islink(path):  # update the file the link names, keep the link
        path = os.path.realpath(path)
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: is a directory")
    tmp = _create_temporary(path)
    try:
        yield tmp
        try:
            _sync(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _sync_folder(path)


def write_atomic(path, data) -> None:
    """Write ``data`` (bytes, or str written as UTF-8) to ``path`` through
    :func:`atomic_output`. A failing write (full disk, ``ulimit -f``, quota) raises
    :class:`OutputError` ("cannot write PATH: File too large; PATH is unchanged") and
    leaves ``path`` as it was."""
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_output(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
        except OSError as exc:
            why = exc.strerror or str(exc)
            if exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
                why += " (the disk, a quota or ulimit -f)"
            kept = "is unchanged" if os.path.exists(path) else "was not created"
            raise OutputError(f"cannot write {path}: {why}; {path} {kept}") from None


def same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name one file: the same resolved path, or (both
    existing) the same device and inode (hard links, bind mounts)."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
