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
    elif what == "parent":  # the server that forked this process
        Path(path).write_text(str(os.getppid()))
    elif what == "grandchild":  # a child of its own, as a driver forked from the server starts its workers
        from study.runtime import forkserver
        child = forkserver.ForkedProcess("tests.forked_probe", ["parent", path + ".child"], Path(path + ".log"),
                                         dict(os.environ), "probe-grandchild")
        Path(path).write_text(f"{os.getppid()} {child.wait(120)}")
    elif what == "cwd":
        Path(path).write_text(os.getcwd())
        print("to stdout")
    elif what == "sleep":
        Path(path).write_text("sleeping")
        time.sleep(600)
    print(f"{what} done", file=sys.stderr)
    return 3 if what == "name" else 0
