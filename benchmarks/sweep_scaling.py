"""Wall time of the same small sweep with 1 worker and with 2 workers on this machine.

A 4-point grid (dense, 4 seeds) of a small recipe, run by `sweep.py` end to end (worker start-up,
training, evaluation, MLflow and Optuna bookkeeping), each in its own empty runs folder; the corpus
and its features are made once beforehand and shared, so neither run pays for them. One worker
gets every core as threads; two workers get half each (the driver's default split).
Goal: 2 workers take at most 0.65 of the time of 1 on 2 cores.
Ends with one JSON line: {"wall_ratio_2_over_1": ..., "one_worker_s": ..., "two_workers_s": ...}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from study.experiment import load_experiment  # noqa: E402
from study.trial import prepare_data  # noqa: E402

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


def run_sweep(experiment: Path, workers: int, folder: Path) -> float:
    folder.mkdir()
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "sweep.py"), str(experiment), "--workers", str(workers),
                    "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--no-analysis"],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=300, help="training utterances per trial")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        experiment = tmp / "scaling.toml"
        experiment.write_text(f'[data]\ncache_dir = "{tmp / "cache"}"\n'
                              + GRID.format(utterances=args.utterances, epochs=args.epochs))
        prepare_data(load_experiment(experiment).config())  # corpus and features, shared by both runs
        one = run_sweep(experiment, 1, tmp / "one")
        two = run_sweep(experiment, 2, tmp / "two")
    ratio = two / one
    print(f"{'workers':>8} {'wall s':>8}\n{1:>8} {one:>8.1f}\n{2:>8} {two:>8.1f}\n"
          f"ratio 2/1: {ratio:.3f} (goal <= 0.65)")
    print(json.dumps({"wall_ratio_2_over_1": round(ratio, 4), "one_worker_s": round(one, 1),
                      "two_workers_s": round(two, 1)}))


if __name__ == "__main__":
    main()
