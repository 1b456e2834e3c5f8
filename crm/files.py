"""Files crm writes beside the store (an export, an import's errors file): whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import CrmError, DiskFullError


@contextlib.contextmanager
def replacing(path: Path, *, cannot: Callable[[OSError], CrmError], kept: str,
              encoding: str = "utf-8", newline: str | None = None) -> Iterator[IO[str]]:
    """A text file to write ``path`` through: a temp file beside it, fsynced, renamed over ``path``
    when the block ends, its directory fsynced so the rename survives a power cut; removed if the
    block fails. A full disk is DiskFullError (``kept`` says what was not written); any other
    OSError becomes ``cannot(exc)``."""
    directory = path.absolute().parent

    def refusal(exc: OSError) -> CrmError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError.at(directory, exc.strerror, kept=kept)
        return cannot(exc)

    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise refusal(exc) from None
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise refusal(exc) from None
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


__all__ = ["replacing"]
