"""Atomic file and directory writes: a reader never sees a half-written file.

Files are written to a temporary sibling and renamed into place (rename is atomic on POSIX).
Directories (datasets, export folders) are built under a temporary sibling name and renamed
into place when complete; an existing target is replaced only when the caller allows it, and
only after the new one is complete.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import NriRayError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_output_dir(out: Path, overwrite: bool, flag: str = "--out") -> None:
    """Refuse an existing output directory unless `overwrite`; fail early, before any work."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise NriRayError(f"{flag} {out}: already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise NriRayError(f"{flag} {out}: exists and is not a directory")


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block succeeds.

    On any error the temporary directory is removed and `out` (new or old) is untouched.
    """
    out = Path(out)
    check_output_dir(out, overwrite, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual directory mode
    try:
        yield tmp
        if out.exists():
            check_output_dir(out, overwrite, flag)  # it may have appeared meanwhile
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
