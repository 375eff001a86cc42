"""Run every variant of an experiment file, several at a time, recorded in Optuna and MLflow.

    python sweep.py                                      # experiments/default.toml: a quick ablation
    python sweep.py experiments/ablation.toml            # the ablation, one factor at a time (2 hours)
    python sweep.py experiments/fsdd.toml --set data.root=/path/to/recordings
    python sweep.py experiments/ablation.toml --status   # a table of the trials so far
    # several machines: one PostgreSQL database and one MLflow tracking server
    python sweep.py EXP --storage postgresql://user@db/optuna --tracking-uri http://mlflow:5000
    python sweep.py EXP --storage postgresql://user@db/optuna --tracking-uri http://mlflow:5000 --join
    # a SLURM cluster: the workers as a job array (docs/cluster.md)
    python sweep.py EXP --launcher slurm --slurm partition=gpu --storage postgresql://... --tracking-uri http://... --detach

Re-running the same command continues the sweep: finished points are skipped, lost ones rerun.
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import mlflow

from study.config import ConfigError, build
from study.data.manifest import DataError
from study.runtime import forkserver, stop_request
from study.runtime.environment import installed_version
from study.data.prepared import prepare_data
from study.data.tokenizer import build_tokenizer
from study.sweep.driver import SweepArgs, SweepError, launch
from study.sweep.launchers.slurm import close_detached
from study.sweep.experiment_file import Experiment, SlurmSpec, load_experiment
from study.sweep import slurm
from study.sweep.slurm import SlurmError
from study.sweep.process import exit_now
from study.sweep.status import pareto_front, status_table
from study.tracking.store import resolve_tracking_uri, runs_url, ui_command


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE with VALUE read as a TOML value (bare words are taken as strings)."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            overrides[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = raw
    return overrides


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", default="experiments/default.toml",
                   help="experiment TOML file (default: %(default)s)")
    p.add_argument("--workers", type=int, help="trials run at once on this machine "
                   "(default: the experiment's sweep.workers, else 1)")
    p.add_argument("--devices", default="", help="comma-separated devices, one per worker in turn, e.g. cuda:0,cuda:1")
    p.add_argument("--storage", help="Optuna storage URL for several machines, e.g. postgresql://... "
                   "(default: a journal file under runs/optuna/)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                   "else sqlite:///<cwd>/runs/mlflow.db)")
    p.add_argument("--join", action="store_true", help="add workers to a sweep another machine started")
    p.add_argument("--max-restarts", type=int, default=3, help="lost workers replaced in one launch; "
                   "the lost trial resumes from its last checkpoint (default: 3)")
    p.add_argument("--hang-minutes", type=float, default=30.0, help="a worker that makes no progress (no training "
                   "step, no decoded batch) for this long is killed and replaced; 0 = never (default: 30)")
    p.add_argument("--status", action="store_true", help="print the sweep's trials (and a SLURM launch's jobs) and exit")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local", help="local: worker processes on "
                   "this machine; slurm: a SLURM job array, one worker per task ([sweep.slurm], docs/cluster.md)")
    p.add_argument("--slurm", dest="slurm_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [sweep.slurm] setting, e.g. --slurm partition=gpu --slurm time_minutes=120")
    p.add_argument("--detach", action="store_true", help="with --launcher slurm: submit the jobs and exit; "
                   "--status then shows them")
    p.add_argument("--check", action="store_true", help="check that the installed torch/torchaudio pair (and "
                   "torch's CUDA wheels) are the pinned ones, then exit (a mismatch exits 2 at any command)")
    p.add_argument("--no-analysis", action="store_true", help="skip regenerating figures at the end")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration key of every trial, e.g. --set train.epochs=2 (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.check:  # importing study already checked the pins (a drift exits 2 there)
        print("environment ok: " + ", ".join(f"{n} {installed_version(n)}" for n in ("torch", "torchaudio")))
        return 0
    # `kill` (SIGTERM) unwinds like Ctrl-C: workers stop, runs close as KILLED, never left RUNNING.
    stop_request.clear()
    stop_request.install()  # once: a second signal (Ctrl-C reaches the group, then `kill`) cannot cut the clean-up short
    try:
        overrides = parse_overrides(args.overrides)
        experiment = load_experiment(args.experiment, overrides)
        workers = args.workers if args.workers is not None else experiment.spec.workers
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if args.hang_minutes < 0:
            raise ConfigError(f"--hang-minutes must be 0 (never) or more, got {args.hang_minutes}")
        slurm_spec = _slurm_spec(experiment, args)
        if args.status:
            table = status_table(experiment, args.storage, Path("runs"))
            print(table.to_string(index=False) if len(table) else f"no trials of {experiment.name} yet")
            jobs, problems = close_detached(experiment, args.storage, Path("runs"), resolve_tracking_uri(args.tracking_uri))
            if jobs:
                print("\nSLURM jobs of the latest launch: " + ", ".join(f"{j} {state}" for j, state in jobs))
            _print_problems(problems)
            return 1 if problems else 0
        if args.launcher == "local":
            forkserver.warm()  # the workers' server imports torch and MLflow while the data is prepared
        if not args.join:  # a broken data set stops here, before any worker; corpus and features are
            _prepare_data(experiment)  # made once, not by every worker at the same time
        sweep_args = SweepArgs(workers, args.storage, resolve_tracking_uri(args.tracking_uri),
                               tuple(d for d in args.devices.split(",") if d), Path("runs"), args.join,
                               args.max_restarts, args.hang_minutes * 60,  # SLURM jobs: no progress file, no watchdog
                               args.launcher, args.detach, slurm_spec)
        result = launch(experiment, overrides, sweep_args)
    except (ConfigError, DataError, SweepError, SlurmError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.detached:
        return 0
    print(status_table(experiment, args.storage, Path("runs")).to_string(index=False))
    if experiment.spec.mode == "search":
        print("\nPareto front (dev WER, parameters):")
        for t in pareto_front(experiment, args.storage, Path("runs")):
            print(f"  trial {t.number}: dev WER {t.values[0]:.2%}, {int(t.values[1]):,} params, {t.params}")
    if not args.no_analysis and not args.join:
        _regenerate_figures(experiment.name, sweep_args.tracking_uri)
    _print_ui_address(experiment.name, sweep_args.tracking_uri, result.parent_run_id)
    _print_problems(result.problems)
    return 1 if result.failed or result.problems else 0


def _print_problems(problems: list[str]) -> None:
    """The launch invariant's breaches: what this launch left undone (rerun the command to continue)."""
    if problems:
        print(f"\nthe launch did not finish every point once ({len(problems)} problem(s)); rerun the command "
              "to continue:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)


def _slurm_spec(experiment: Experiment, args: argparse.Namespace) -> SlurmSpec:
    """[sweep.slurm] with --slurm overrides; the SLURM options checked before anything starts."""
    if args.detach and args.launcher != "slurm":
        raise ConfigError("--detach leaves SLURM jobs running: it needs --launcher slurm")
    spec = experiment.spec.slurm
    if args.slurm_overrides:
        spec = build(SlurmSpec, {**asdict(spec), **parse_overrides(args.slurm_overrides)}, "--slurm ")
    if args.launcher == "slurm":
        if importlib.util.find_spec("submitit") is None:
            raise ConfigError("--launcher slurm needs submitit: pip install -e '.[slurm]' -c requirements.lock")
        if shutil.which("sbatch") is None:
            raise ConfigError("--launcher slurm: no sbatch on this machine's PATH (run it from a SLURM login node)")
        slurm.tasks_per_node(spec, slurm.trial_ranks(experiment))  # ranks that do not split over the nodes
    return spec


def _prepare_data(experiment: Experiment) -> None:
    """Corpus, features and (BPE) units of the base configuration, made once before the workers start."""
    cfg = experiment.config()
    try:
        data = prepare_data(cfg)
        build_tokenizer(cfg.text, data["train"].transcripts, cfg.data.cache_dir)
    except (ConfigError, ValueError) as exc:  # e.g. a voice the installed eSpeak lacks, a BPE size too large
        raise ConfigError(f"{experiment.path}: {exc}") from None


def _print_ui_address(experiment: str, tracking_uri: str, parent_run_id: str) -> None:
    """Where the MLflow UI shows this sweep's runs: a plain experiment link opens MLflow 3's GenAI
    overview ("Traces 0"), so the address asks for the runs table, filtered to this sweep."""
    experiment_id = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment).experiment_id
    command = ui_command(tracking_uri)
    print("\nMLflow UI:" + (f" start it with\n  {command}\nthen open" if command else " open"))
    print(f"  {runs_url(tracking_uri, experiment_id, parent_run_id)}\n"
          f"and expand the sweep's run (the + beside sweep-...) to see its trials.")


def _regenerate_figures(experiment: str, tracking_uri: str) -> None:
    from analysis import NoFinishedRuns, regenerate
    try:
        paths = regenerate(experiment, tracking_uri)
        print(f"figures and tables: {len(paths)} files under figures/{experiment}/")
    except NoFinishedRuns as exc:
        print(f"no figures: {exc}")


if __name__ == "__main__":
    exit_now(main())
