"""Wall time of the same small sweep with 1 worker and with 2 workers on this machine.

A 4-point grid (dense, 4 seeds) of a small recipe, run by `sweep.py` end to end (worker start-up,
training, evaluation, MLflow and Optuna bookkeeping), each in its own empty runs folder; the corpus
and its features are made once beforehand and shared, so neither run pays for them. One worker
gets every core as threads; two workers get half each (the driver's default split). A third run,
1 worker held to the 2-worker share of threads, separates process parallelism from what a lone
worker already gains from threads.
Goal: the 2-worker ratio within 10% of the ideal (half the 1-thread run's wall time over the
2-thread run's); `--epochs` lengthens the trials to show what the launch's fixed cost hides.
Where the rest goes: each run's trial runs (MLflow start and end times, and time/train_s) split its
wall time into the launch (start to the first trial), trials (of which training), the gaps between
trials, and the end (the last trial to exit), per worker.
Ends with one JSON line: {"wall_ratio_2_over_1": ..., "one_worker_s": ..., "two_workers_s": ...,
"wall_ratio_2_over_1_same_threads": ..., "span_ratio_2_over_1": ... (launch and end left out), ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
from study.data.prepared import prepare_data  # noqa: E402
from study.sweep.experiment_file import load_experiment  # noqa: E402

GRID = """
[data.synthetic]
train_utterances = {utterances}
dev_utterances = 40
test_utterances = 40
[model]
d_model = 64
ffn_dim = 256
conv_channels = 64
num_blocks = 2
[train]
epochs = {epochs}
[sweep]
grid = {{ "train.seed" = [0, 1, 2, 3] }}
[[sweep.arms]]
set = {{ method = "dense" }}
"""


@dataclass
class Launch:
    wall_s: float
    phases: dict[str, float]  # seconds per worker: launch, trials, training (within trials), gaps, end


def run_sweep(experiment: Path, workers: int, folder: Path, *extra: str) -> Launch:
    folder.mkdir()
    start = time.time()
    subprocess.run([sys.executable, str(ROOT / "sweep.py"), str(experiment), "--workers", str(workers),
                    "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--no-analysis", *extra],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time()
    return Launch(end - start, phases(folder / "mlflow.db", start, end, workers))


def phases(db: Path, start: float, end: float, workers: int) -> dict[str, float]:
    """Per worker, from the trial runs' start and end times: launch (start to the first trial),
    trials and the training within them, gaps between a worker's trials, and end (to exit)."""
    import mlflow
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    # trial runs only: the parent run has no training time
    spans = sorted((r.info.start_time / 1000, r.info.end_time / 1000, r.data.metrics["time/train_s"])
                   for r in runs if "time/train_s" in r.data.metrics)
    first, last = spans[0][0], max(e for _, e, _ in spans)
    trials = sum(e - s for s, e, _ in spans) / workers
    launch, finish = first - start, end - last
    return {"launch": launch, "trials": trials, "training": sum(t for *_, t in spans) / workers,
            "gaps": (end - start) - launch - finish - trials, "end": finish}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=600, help="training utterances per trial")
    parser.add_argument("--epochs", type=int, default=3)
    args = quick.parse_args(parser, utterances=24, epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        experiment = tmp / "scaling.toml"
        experiment.write_text(f'[data]\ncache_dir = "{tmp / "cache"}"\n'
                              + GRID.format(utterances=args.utterances, epochs=args.epochs))
        prepare_data(load_experiment(experiment).config())  # corpus and features, shared by both runs
        cores = len(os.sched_getaffinity(0))
        one = run_sweep(experiment, 1, tmp / "one")
        two = run_sweep(experiment, 2, tmp / "two")
        one_held = run_sweep(experiment, 1, tmp / "one-held", "--set", f"train.threads={max(1, cores // 2)}")
    half = max(1, cores // 2)
    launches = {f"1 worker, {cores} threads": one, f"2 workers, {half} thread(s) each": two,
                f"1 worker, {half} thread(s)": one_held}
    names = list(one.phases)
    print(f"{'run':<30}{'wall s':>8}" + "".join(f"{n:>10}" for n in names) + "   (seconds per worker)")
    for label, launch in launches.items():
        print(f"{label:<30}{launch.wall_s:>8.1f}" + "".join(f"{launch.phases[n]:>10.1f}" for n in names))
    ratio, held_ratio = two.wall_s / one.wall_s, two.wall_s / one_held.wall_s
    # the same ratio if launching and ending cost nothing: what the processes themselves achieve
    span = lambda launch: launch.wall_s - launch.phases["launch"] - launch.phases["end"]  # noqa: E731
    span_ratio = span(two) / span(one)
    # ideal: two workers each take half of what one worker takes at their thread count
    ideal = one_held.wall_s / 2 / one.wall_s
    print(f"ratio 2/1: {ratio:.3f} (goal: within 10% of this run's ideal {ideal:.3f}, so <= {1.1 * ideal:.3f}); "
          f"with the same threads per trial: {held_ratio:.3f}; first trial's start to last trial's end "
          f"(no launch or end): {span_ratio:.3f}")
    print(json.dumps({"wall_ratio_2_over_1": round(ratio, 4), "one_worker_s": round(one.wall_s, 1),
                      "two_workers_s": round(two.wall_s, 1), "one_worker_same_threads_s": round(one_held.wall_s, 1),
                      "wall_ratio_2_over_1_same_threads": round(held_ratio, 4), "ideal_ratio": round(ideal, 4),
                      "span_ratio_2_over_1": round(span_ratio, 4),
                      "phases_s": {label: {n: round(v, 2) for n, v in launch.phases.items()}
                                   for label, launch in launches.items()}}))


if __name__ == "__main__":
    main()
