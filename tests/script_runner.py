"""`python SCRIPT ARGS...` inside a child of the preloaded forkserver (tests.helpers.run_script): the
script runs as __main__, with its own folder first on sys.path, as the interpreter would put it."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(args: list[str]) -> int:
    script, *rest = args
    sys.argv = [script, *rest]
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    return 0
