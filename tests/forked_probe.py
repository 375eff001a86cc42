"""A child for the forkserver tests: `main([what, path])` reports what it was asked about into `path`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main(args: list[str]) -> int:
    what, path = args
    if what == "heartbeat":  # a setting read from the environment when the module is imported
        from study.sweep.timing import HEARTBEAT_SECONDS
        Path(path).write_text(str(HEARTBEAT_SECONDS))
    elif what == "name":
        Path(path).write_text(Path(f"/proc/{os.getpid()}/comm").read_text().strip())
    elif what == "interrupt":
        print("interrupted on purpose", flush=True)
        raise KeyboardInterrupt
    elif what == "sleep":
        Path(path).write_text("sleeping")
        time.sleep(600)
    print(f"{what} done", file=sys.stderr)
    return 3 if what == "name" else 0
