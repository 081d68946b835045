"""Atomic file writes: a temporary file in the target's directory, fsync, then os.replace."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable


def atomic_write_bytes(path: str | os.PathLike, data) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    atomic_write(path, [data])


def atomic_write(path: str | os.PathLike, parts: Iterable) -> None:
    """Write the byte strings of `parts` one after another to `path` (made as they are written: a large
    file need not be in memory whole), so that readers see either the old file or the whole new one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            for data in parts:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable where the platform allows it
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old
