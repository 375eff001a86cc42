"""One trial as one rank of a distributed run: `python -m study.distributed_trial`, started by torchrun
(see study/runtime/distributed.py). Either a resolved configuration (--resolved, what run_trial writes when it
relaunches itself) or an experiment file with overrides (several machines, started by hand)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from study.runtime import distributed
from study.config import load_config
from study.sweep.experiment_file import load_experiment
from study.tracking.store import resolve_tracking_uri
from study.trial import run_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("experiment", nargs="?", help="experiment TOML file (its base configuration)")
    parser.add_argument("--resolved", help="a resolved trial configuration (TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tracking-uri", default="")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--tags", default="{}")
    parser.add_argument("--ranks-from-slurm", action="store_true", help="started by srun: rank from SLURM_PROCID")
    args = parser.parse_args()
    if args.ranks_from_slurm:
        distributed.ranks_from_slurm()
    if args.resolved:
        cfg = load_config(args.resolved)
    else:
        from sweep import parse_overrides
        cfg = load_experiment(args.experiment).config(extra=parse_overrides(args.overrides))
    try:
        run_trial(cfg, resolve_tracking_uri(args.tracking_uri), Path(args.runs_dir), json.loads(args.tags))
    finally:
        distributed.shutdown()
    # The trial is done and logged. Leaving without the interpreter's C++ teardown: a rank that only
    # trains still aborted there now and then after leaving the process group ("terminate called without
    # an active exception", twice in CI), which failed a finished trial.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
