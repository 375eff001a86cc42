"""`python SCRIPT ARGS...`, `python -m MODULE ARGS...` or `python -c CODE` inside a child of the preloaded
forkserver (tests.helpers.run_python): it runs as __main__, with the path the interpreter would give it
first on sys.path (the script's folder; for a module or code, the working directory)."""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def main(args: list[str]) -> int:
    if args[0] == "-c":
        sys.argv = ["-c", *args[2:]]
        sys.path.insert(0, os.getcwd())
        run = lambda: exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: E731
    elif args[0] == "-m":
        module, *rest = args[1:]
        sys.argv = [module, *rest]
        sys.path.insert(0, os.getcwd())
        run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        script, *rest = args
        sys.argv = [script, *rest]
        sys.path.insert(0, str(Path(script).resolve().parent))
        run = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
    try:
        run()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    return 0
