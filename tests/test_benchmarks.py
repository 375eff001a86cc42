"""Every benchmark script runs with `--quick` (tiny sizes, one round) and ends with its JSON line holding
the figures it promises: the scripts keep working between the runs whose figures docs/benchmarks.md
quotes. The figures themselves are not judged here: speed goals belong to the benchmarks."""
from __future__ import annotations

import json
import math

import pytest

from tests.helpers import FOUR_POINTS, ROOT, run_python, write_experiment

pytestmark = pytest.mark.slow  # each starts a Python process that builds models

KEYS = {  # script: keys of its JSON line
    "adl_overhead.py": ["adl_step_time_ratio"],
    "distillation_cost.py": ["distill_step_time_ratio", "hidden_step_time_ratio", "step_ms"],
    "encoder_speed.py": ["step_time_ratio_vs_torchaudio", "ours_ms"],
    "latency_breakdown.py": ["parts", "total_ms"],
    "feature_memory.py": ["sizes", "features_mb"],
    "train_throughput.py": ["audio_s_per_s_old", "audio_s_per_s_new"],
    "gpu_throughput.py": ["train_audio_s_per_s"],
    "deploy_latency.py": ["latency_ms", "speedup", "flop_reduction_ratio"],
    "sweep_scaling.py": ["wall_ratio_2_over_1", "one_worker_s", "two_workers_s"],
    "outage_drill.py": ["drills"],
    "transcribe_speed.py": ["transcribe_over_evaluation", "evaluation_s", "transcribe_s"],
}
# Minutes even in their quick form: two ONNX exports, three sweeps, a sweep through a PostgreSQL outage
LONG = {"deploy_latency.py", "sweep_scaling.py", "outage_drill.py"}
TAKES_AN_EXPERIMENT = {"latency_breakdown.py", "deploy_latency.py", "feature_memory.py", "train_throughput.py",
                       "gpu_throughput.py", "transcribe_speed.py"}  # given the tests' tiny recipe on the session's corpus


def test_every_benchmark_script_has_a_quick_form_checked_here():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"quick.py"}
    assert scripts == set(KEYS)  # a new benchmark gets its keys above, and --quick (benchmarks/quick.py)


@pytest.mark.parametrize("script", [s if s not in LONG else pytest.param(s, marks=pytest.mark.long)
                                    for s in sorted(KEYS)])
def test_a_benchmark_ends_with_its_json_line(script, tmp_path, corpus_cache):
    options = ["--quick"]
    if script in TAKES_AN_EXPERIMENT:
        # an experiment file as shipped, sweep table and all: the script reads its base configuration
        options += ["--experiment", str(write_experiment(tmp_path, corpus_cache, FOUR_POINTS))]
    done = run_python([str(ROOT / "benchmarks" / script), *options], tmp_path, timeout=900)  # forked: torch imported once
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 1  # a readable table first
    figures = json.loads(lines[-1])
    assert set(KEYS[script]) <= set(figures), figures
    for key in KEYS[script]:
        value = figures[key]
        numbers = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        assert all(v is None or isinstance(v, dict) or (isinstance(v, (int, float)) and math.isfinite(v))
                   for v in numbers), (key, value)
