"""python -m analysis [EXPERIMENT ...]: regenerate figures and tables from the MLflow store.

Exit codes: 0 done; 2 an experiment or parent run is not in the store; 3 an experiment has no
finished trial runs (or, with no experiment named, the store holds no trial runs at all).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.report import regenerate
from analysis.runs import (
    ExperimentNotFound,
    NoFinishedRuns,
    experiments_with_trials,
    parent_experiment,
)
from study.tracking.store import resolve_tracking_uri

NOT_FOUND, NOTHING_FINISHED = 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help="MLflow experiment names (default: every experiment that has trial runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                        "else sqlite:///<cwd>/runs/mlflow.db)")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for the figures and tables, one subfolder per experiment (default: %(default)s)")
    parser.add_argument("--parent-run", metavar="RUN_ID",
                        help="read only this sweep's trials and log the figures to this parent run")
    args = parser.parse_args(argv)
    uri = resolve_tracking_uri(args.tracking_uri)

    experiments = list(args.experiments)
    try:
        if args.parent_run:
            experiments = experiments or [parent_experiment(uri, args.parent_run)]
        elif not experiments:
            experiments = experiments_with_trials(uri)
    except ExperimentNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NOT_FOUND
    if not experiments:
        print(f"error: no experiment in {uri} has trial runs", file=sys.stderr)
        return NOTHING_FINISHED
    if args.parent_run and len(experiments) > 1:
        parser.error("--parent-run takes one experiment (the one the parent run belongs to)")

    codes = []
    for experiment in experiments:
        try:
            regenerate(experiment, uri, args.out, args.parent_run)
            codes.append(0)
        except ExperimentNotFound as exc:
            print(f"error: {exc}", file=sys.stderr)
            codes.append(NOT_FOUND)
        except NoFinishedRuns as exc:
            print(f"error: {exc}; nothing to plot", file=sys.stderr)
            codes.append(NOTHING_FINISHED)
    return NOT_FOUND if NOT_FOUND in codes else max(codes)


if __name__ == "__main__":
    sys.exit(main())
