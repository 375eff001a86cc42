"""Files written whole or not at all, and still there after a power cut: written to a temporary file,
flushed to the disk (fsync), renamed into place, and the rename itself flushed (the folder's fsync).
A rename alone is atomic but not durable: after a crash the new name can point at a file whose data
never reached the disk."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable


def replace_durably(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then takes `path`'s place durably."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
    except BaseException as exc:  # a full disk, a signal: the half-written file must not keep the space
        full = _nearly_full(path.parent)
        tmp.unlink(missing_ok=True)
        if full and isinstance(exc, Exception):  # torch.save says only "unexpected pos 64 vs 0"
            raise OSError(errno.ENOSPC, f"No space left on device: the disk holding {path.parent} is full; "
                          f"{path.name} was not written ({type(exc).__name__}: {str(exc)[:200]})") from exc
        raise
    tmp.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _nearly_full(folder: Path) -> bool:
    """Less than a megabyte left to an unprivileged writer."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize < 1 << 20
