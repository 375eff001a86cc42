"""Wall time of the same small sweep with 1 worker and with 2 workers on this machine.

A 4-point grid (dense, 4 seeds) of a small recipe, run by `sweep.py` end to end (worker start-up,
training, evaluation, MLflow and Optuna bookkeeping), each in its own empty runs folder; the corpus
and its features are made once beforehand and shared, so neither run pays for them. One worker
gets every core as threads; two workers get half each (the driver's default split). A third run,
1 worker held to the 2-worker share of threads, separates process parallelism from what a lone
worker already gains from threads.
Goal: 2 workers take at most 0.65 of the time of 1 on 2 cores.
Ends with one JSON line: {"wall_ratio_2_over_1": ..., "one_worker_s": ..., "two_workers_s": ...,
"wall_ratio_2_over_1_same_threads": ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


def run_sweep(experiment: Path, workers: int, folder: Path, *extra: str) -> float:
    folder.mkdir()
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "sweep.py"), str(experiment), "--workers", str(workers),
                    "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--no-analysis", *extra],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=600, help="training utterances per trial")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
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
    ratio, held_ratio = two / one, two / one_held
    print(f"{'run':<34} {'wall s':>8}\n{'1 worker, ' + str(cores) + ' threads':<34} {one:>8.1f}\n"
          f"{'2 workers, ' + str(max(1, cores // 2)) + ' thread(s) each':<34} {two:>8.1f}\n"
          f"{'1 worker, ' + str(max(1, cores // 2)) + ' thread(s)':<34} {one_held:>8.1f}\n"
          f"ratio 2/1: {ratio:.3f} (goal <= 0.65); with the same threads per trial: {held_ratio:.3f}")
    print(json.dumps({"wall_ratio_2_over_1": round(ratio, 4), "one_worker_s": round(one, 1),
                      "two_workers_s": round(two, 1), "one_worker_same_threads_s": round(one_held, 1),
                      "wall_ratio_2_over_1_same_threads": round(held_ratio, 4)}))


if __name__ == "__main__":
    main()
