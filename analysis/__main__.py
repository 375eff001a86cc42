"""python -m analysis [EXPERIMENT ...]: regenerate figures and tables from the MLflow store.
python -m analysis [EXPERIMENT] --from results/EXPERIMENT.json.gz: the same from a results bundle.
python -m analysis export EXPERIMENT: write the experiment's results bundle (results/EXPERIMENT.json.gz).

Exit codes: 0 done; 2 an experiment or parent run is not in the store, or a bundle that cannot be
read or would be replaced by runs of other code; 3 an experiment has no finished trial runs (or, with
no experiment named, the store holds no trial runs at all).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.bundle import BundleError, from_store, read_bundle, write_bundle
from analysis.report import regenerate, write_outputs
from analysis.runs import (
    ExperimentNotFound,
    NoFinishedRuns,
    experiments_with_trials,
    parent_experiment,
)
from study.tracking.store import resolve_tracking_uri

NOT_FOUND, NOTHING_FINISHED = 2, 3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        return export(argv[1:])
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
    parser.add_argument("--from", dest="bundle", type=Path, metavar="BUNDLE",
                        help="read the runs from a results bundle instead of the store (no training, no MLflow)")
    args = parser.parse_args(argv)
    if args.bundle:
        return from_bundle(args.bundle, args.experiments, args.out)
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


def from_bundle(path: Path, experiments: list[str], out: Path) -> int:
    try:
        inputs = read_bundle(path)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NOT_FOUND
    if experiments and experiments != [inputs.experiment]:
        print(f"error: {path} holds experiment {inputs.experiment!r}, not {', '.join(experiments)}", file=sys.stderr)
        return NOT_FOUND
    try:
        write_outputs(inputs, out)
    except NoFinishedRuns as exc:
        print(f"error: {exc}; nothing to plot", file=sys.stderr)
        return NOTHING_FINISHED
    return 0


def export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis export",
                                     description="Write one experiment's runs to a results bundle.")
    parser.add_argument("experiment", metavar="EXPERIMENT")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: as python -m analysis)")
    parser.add_argument("--parent-run", metavar="RUN_ID", help="only this sweep's trials")
    parser.add_argument("--out", type=Path, help="the bundle's path (default: results/EXPERIMENT.json.gz)")
    parser.add_argument("--force", action="store_true", help="replace a bundle of runs from other code")
    args = parser.parse_args(argv)
    path = args.out or Path("results") / f"{args.experiment}.json.gz"
    try:
        inputs = from_store(args.experiment, resolve_tracking_uri(args.tracking_uri), args.parent_run)
        if inputs.trials.frame.empty:
            raise NoFinishedRuns(f"experiment {args.experiment!r} has no finished trial runs")
        write_bundle(inputs, path, args.force)
    except (ExperimentNotFound, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NOT_FOUND
    except NoFinishedRuns as exc:
        print(f"error: {exc}; nothing to export", file=sys.stderr)
        return NOTHING_FINISHED
    code = inputs.code()
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): {len(inputs.trials.frame)} finished trial runs, "
          f"code {', '.join(code['code_version']) or 'unknown'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
