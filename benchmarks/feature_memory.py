"""Memory of a worker reading the feature cache, at two corpus sizes: it must not grow with the corpus.

For each size of the built-in corpus (--sizes, training utterances), a fresh process opens the split's
memory-mapped feature cache (study/data/feature_cache.py; built first if absent) and pads every batch
of one epoch, as a training worker does. It reports its peak resident memory (VmHWM), its private
(anonymous) memory, and the file-backed pages it has mapped: those are the page cache, shared by every
worker on the machine and given back under pressure. The old cache (one torch.save'd list, loaded whole
by each worker) cost every worker the whole split in private memory: the `copy` column shows that.
Ends with one JSON line: {"sizes": [...], "features_mb": [...], "peak_rss_mb": [...], "private_mb": [...]}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)

WORKER = """
import json, sys
sys.path.insert(0, {root!r})
from study.sweep.experiment_file import load_experiment
from study.data.batching import make_batches, pad_batch
from study.data.prepared import prepare_data
from study.training import batch_frames
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {{k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}}
cfg = load_experiment({experiment!r}).config(extra={{"data.synthetic.train_utterances": {size}}})
train = prepare_data(cfg)["train"]
start = status()
for indices in make_batches(train.lengths, batch_frames(cfg), shuffle_seed=0):
    pad_batch(indices, train.features)
end = status()
features_mb = sum(f.numel() for f in train.features) * 2 / 2**20
copy = [f.clone() for f in train.features]
print(json.dumps({{"features_mb": features_mb, "peak_rss_mb": end["VmHWM"], "private_mb": end["RssAnon"],
                  "mapped_mb": end["RssFile"], "private_growth_mb": end["RssAnon"] - start["RssAnon"],
                  "copy_mb": status()["RssAnon"] - end["RssAnon"]}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=str(ROOT / "experiments" / "dense.toml"))
    parser.add_argument("--sizes", type=int, nargs=2, default=[1500, 6000])
    args = quick.parse_args(parser, experiment=quick.SMOKE, sizes=[8, 16])
    rows = []
    for size in args.sizes:
        code = WORKER.format(root=str(ROOT), experiment=args.experiment, size=size)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'utterances':>10} {'features MB':>12} {'peak RSS MB':>12} {'private MB':>11} {'mapped MB':>10} "
          f"{'epoch growth':>13} {'copy MB':>8}")
    for size, r in zip(args.sizes, rows):
        print(f"{size:>10} {r['features_mb']:12.0f} {r['peak_rss_mb']:12.0f} {r['private_mb']:11.0f} "
              f"{r['mapped_mb']:10.0f} {r['private_growth_mb']:13.1f} {r['copy_mb']:8.0f}")
    print(json.dumps({"sizes": args.sizes, "features_mb": [round(r["features_mb"], 1) for r in rows],
                      "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in rows],
                      "private_mb": [round(r["private_mb"], 1) for r in rows]}))


if __name__ == "__main__":
    main()
