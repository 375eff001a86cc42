"""Files written whole or not at all, and still there after a power cut: written to a temporary file,
flushed to the disk (fsync), renamed into place, and the rename itself flushed (the folder's fsync).
A rename alone is atomic but not durable: after a crash the new name can point at a file whose data
never reached the disk."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_durably(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which then takes `path`'s place durably."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as written:
        os.fsync(written.fileno())
    tmp.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
