"""A PostgreSQL outage in the middle of a two-worker sweep, with the sweep's default waits: is it ridden
through in the same launch, with no live trial failed as stale and nothing trained twice?

Each drill: a fresh runs folder and an emptied database; a 2-point grid of the tests' tiny recipe, with
enough epochs that both trials still train when the database comes back; `sweep.py --workers 2` is
started, the server is stopped (`pg_ctlcluster ... stop`) once both trials have a checkpoint, and started
again OUTAGE seconds later. Needs root, a local PostgreSQL cluster and the database of
$SWEEP_TEST_POSTGRES (as the tests; .ci/run sets them up). Also counts the server connections the
sweep's processes hold just before the outage (the driver's and each worker's), for docs/sweeps.md.

    python benchmarks/outage_drill.py --outages 60 150

Ends with one JSON line: {"drills": [{"outage_s": ..., "exit_code": ..., "points_finished_once": ...,
"failed_as_stale": ..., "running_left": ..., "finished_runs": ..., "parent": ..., "connections": ...}]}.
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
import quick  # noqa: E402 (benchmarks/quick.py, beside this script)
import mlflow  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from tests.helpers import FOUR_POINTS, children_of, write_experiment  # noqa: E402
from tests.services import POSTGRES_URL  # noqa: E402

TWO_POINTS = FOUR_POINTS.replace('grid = { "train.seed" = [0, 1] }', "")


def cluster() -> list[str]:
    version = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir())[-1]
    return ["pg_ctlcluster", version, "main"]


def connections(driver_pid: int) -> dict[str, list[int]]:
    """Open connections to PostgreSQL's port per process of the sweep (from `ss -tnp`): the driver's and
    each worker's, so that this script's own connections are not counted."""
    listing = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout.splitlines()
    count = lambda pid: sum(":5432" in line and f"pid={pid}," in line for line in listing)  # noqa: E731
    workers = [pid for pid in children_of(driver_pid)
               if b"study.sweep.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    return {"driver": [count(driver_pid)], "workers": [count(pid) for pid in workers]}


def drill(outage: float, folder: Path, cache: Path) -> dict:
    for name in optuna.get_all_study_names(POSTGRES_URL):
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)
    exp = write_experiment(folder, cache, TWO_POINTS, epochs=int(outage * 20) + 300)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    command = [sys.executable, str(ROOT / "sweep.py"), str(exp), "--tracking-uri", uri, "--no-analysis",
               "--storage", POSTGRES_URL, "--workers", "2"]
    with open(folder / "driver.log", "w") as log:
        proc = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    while len(list(folder.glob("runs/trials/*/*/checkpoint.pt"))) < 2:
        if proc.poll() is not None:
            raise SystemExit(f"the sweep ended before both trials checkpointed: {(folder / 'driver.log').read_text()[-2000:]}")
        time.sleep(0.5)
    held = connections(proc.pid)
    subprocess.run([*cluster(), "stop"], check=True)
    stopped = time.time()
    time.sleep(outage)
    subprocess.run([*cluster(), "start"], check=True)
    back = time.time()
    code = proc.wait(timeout=3600)
    trials = optuna.load_study(study_name="tiny_sweep", storage=POSTGRES_URL).get_trials()
    complete = [t.user_attrs["point"] for t in trials if t.state == TrialState.COMPLETE]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny_sweep").experiment_id])
    children = [r for r in runs if r.data.tags.get("sweep.role") == "trial"]
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    ends = [r.info.end_time / 1000 - back for r in children if r.info.end_time]
    return {"outage_s": round(back - stopped, 1), "exit_code": code,
            "points_finished_once": len(complete) == len(set(complete)) == 2,
            "failed_as_stale": sum("worker lost" in t.user_attrs.get("failure_reason", "") for t in trials),
            "running_left": sum(t.state == TrialState.RUNNING for t in trials),
            "finished_runs": sum(r.info.status == "FINISHED" for r in children),
            "parent": ",".join(p.info.status for p in parents), "connections": held,
            "trials_ended_s_after_restart": [round(e, 1) for e in sorted(ends)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outages", type=float, nargs="+", default=[60, 150], help="seconds the server is down")
    args = quick.parse_args(parser, outages=[5])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for outage in args.outages:
            folder = Path(tmp) / f"outage-{outage:g}"
            folder.mkdir()
            results.append(drill(outage, folder, cache))
            print(f"outage {results[-1]['outage_s']:6.1f} s: exit {results[-1]['exit_code']}, "
                  f"points finished once {results[-1]['points_finished_once']}, failed as stale "
                  f"{results[-1]['failed_as_stale']}, RUNNING left {results[-1]['running_left']}, FINISHED runs "
                  f"{results[-1]['finished_runs']}, parent {results[-1]['parent']}, connections held "
                  f"{results[-1]['connections']}, trials ended {results[-1]['trials_ended_s_after_restart']} s "
                  "after the restart", flush=True)
    print(json.dumps({"drills": results}))


if __name__ == "__main__":
    main()
