"""Every benchmark script runs in a quick form (tiny sizes, one round) and ends with its JSON line holding
the figures it promises: the scripts keep working between the runs whose figures docs/benchmarks.md
quotes. The figures themselves are not judged here: speed goals belong to the benchmarks."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.helpers import ROOT, write_experiment

pytestmark = pytest.mark.slow  # each starts a Python process that builds models

TINY = "{tiny}"  # replaced by a tiny recipe's configuration file (no sweep) on the session's corpus
QUICK = {  # script: (arguments, keys of its JSON line)
    "adl_overhead.py": (["--batch", "2", "--frames", "60", "--steps", "2"], ["adl_step_time_ratio"]),
    "distillation_cost.py": (["--batch", "2", "--frames", "60", "--steps", "2"], ["distill_step_time_ratio", "step_ms"]),
    "encoder_speed.py": (["--batch", "2", "--frames", "40", "--steps", "2", "--warmup", "1"],
                         ["step_time_ratio_vs_torchaudio", "ours_ms"]),
    "latency_breakdown.py": (["--experiment", TINY, "--rounds", "1"], ["parts", "total_ms"]),
    "feature_memory.py": (["--experiment", TINY, "--sizes", "8", "16"], ["sizes", "features_mb"]),
    "train_throughput.py": (["--experiment", TINY, "--utterances", "12", "--rounds", "1"],
                            ["audio_s_per_s_old", "audio_s_per_s_new"]),
    "gpu_throughput.py": (["--experiment", TINY, "--utterances", "24", "--epochs", "1"],
                          ["train_audio_s_per_s"]),
}


def test_every_benchmark_script_has_a_quick_form_here():
    """A new benchmark gets its quick form above. Measured on their own (docs/benchmarks.md): the outage
    drill and the sweep scaling run sweeps of minutes; the deployment latency exports two models to ONNX
    (a minute even at the tiny size; the export itself is tested in test_export.py)."""
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts - set(QUICK) == {"outage_drill.py", "sweep_scaling.py", "deploy_latency.py"}


@pytest.mark.parametrize("script", sorted(QUICK))
def test_a_benchmark_ends_with_its_json_line(script, tmp_path, corpus_cache):
    options, keys = QUICK[script]
    recipe = write_experiment(tmp_path, corpus_cache, "")
    options = [str(recipe) if o == TINY else o for o in options]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *options], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 1  # a readable table first
    figures = json.loads(lines[-1])
    assert set(keys) <= set(figures), figures
    for key in keys:
        value = figures[key]
        numbers = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        assert all(v is None or isinstance(v, dict) or (isinstance(v, (int, float)) and math.isfinite(v))
                   for v in numbers), (key, value)
