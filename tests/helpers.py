"""What the tests share: the tiny recipe, tiny sweep experiments written to a folder, and the checks and
process handling of the end-to-end sweep tests."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from study.config import dumps_toml
from study.runtime import forkserver
from study.sweep.optuna_storage import point_of
from tests.services import missing_service

TINY_RECIPE = {
    "data": {"synthetic": {"train_utterances": 24, "dev_utterances": 4, "test_utterances": 4,
                           "min_words": 3, "max_words": 5, "rate_min": 150, "rate_max": 180}},
    "text": {"units": "char"},  # 24 utterances: too few for a BPE vocabulary (tests that need one set it)
    "model": {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "conv_channels": 32, "conv_kernel": 5,
              "num_blocks": 1, "subsampling": 4, "front_end": "conv2d", "subsampling_channels": 8, "dropout": 0.1},
    "train": {"epochs": 3, "batch_seconds": 12.0, "lr": 3e-3, "warmup_fraction": 0.1, "threads": 1},
    "tracking": {"experiment": "tiny"},
}


ROOT = Path(__file__).resolve().parent.parent


def write_experiment(folder: Path, cache: Path, sweep_toml: str, epochs: int = 1) -> Path:
    recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "cache_dir": str(cache)},
              "train": {**TINY_RECIPE["train"], "epochs": epochs}}
    recipe.pop("tracking")
    path = folder / "tiny_sweep.toml"
    path.write_text(dumps_toml(recipe) + "\n" + sweep_toml)
    return path


FOUR_POINTS = """
[sweep]
grid = { "train.seed" = [0, 1] }
[[sweep.arms]]
name = "dense"
set = { method = "dense" }
grid = { "model.ffn_dim" = [32, 64] }
"""


FOUR_POINTS_AND_A_FAILURE = FOUR_POINTS + """[[sweep.arms]]
name = "impossible"   # no dense shape has 10 parameters: this trial raises
set = { method = "small_dense", "prune.target_params" = 10, "train.seed" = 0 }
"""


# One two-rank DDP trial of the tiny recipe, as a sweep point and as `--set` overrides (dropout and
# SpecAugment off, so that ranks started in different ways train the same numbers)
DDP_SETTINGS = {"train.processes": 2, "model.dropout": 0.0, "features.freq_masks": 0, "features.time_masks": 0}
DDP_POINT = """
[[sweep.arms]]
name = "ddp"
set = { method = "dense", """ + ", ".join(f'"{k}" = {v}' for k, v in DDP_SETTINGS.items()) + """ }
"""
DDP_EPOCHS = 3


def train_ddp_reference(folder: Path, cache: Path) -> dict:
    """`python -m study.distributed_trial EXPERIMENT.toml --set ...`, the form started by hand, which run_trial
    relaunches under torchrun as it does a sweep's trial; returns its run and where its store and runs are."""
    folder.mkdir(parents=True, exist_ok=True)
    experiment = write_experiment(folder, cache, FOUR_POINTS)  # a sweep table, as shipped files have: its base is read
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    overrides = [f"{k}={v}" for k, v in {**DDP_SETTINGS, "method": "dense", "train.epochs": DDP_EPOCHS}.items()]
    done = run_python(["-m", "study.distributed_trial", str(experiment), *[a for o in overrides for a in ("--set", o)],
                       "--tracking-uri", uri, "--runs-dir", str(folder / "runs")], ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run,), _ = child_runs(uri)
    return {"experiment": str(experiment), "tracking_uri": uri, "runs_dir": str(folder / "runs"),
            "run_id": run.info.run_id}


def losses(tracking_uri: str, run_id: str) -> list[float]:
    """A run's training loss, epoch by epoch."""
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(run_id, "train/loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def trials(name: str, storage) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def child_runs(tracking_uri: str, experiment: str = "tiny_sweep"):
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return ([r for r in runs if r.data.tags.get("sweep.role") == "trial"],
            [r for r in runs if r.data.tags.get("sweep.role") == "parent"])


def check_grid_ran_once(tracking_uri: str, storage, failing: bool = True, points: int = 4) -> None:
    done = [t for t in trials("tiny_sweep", storage) if t.state == TrialState.COMPLETE]
    expected, points = points, [point_of(t) for t in done]
    assert len(points) == len(set(points)) == expected  # every point exactly once
    children, parents = child_runs(tracking_uri)
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["grid_point"] for r in finished) == sorted(points)
    running = [(r.data.tags.get("sweep.role"), r.info.run_name, r.data.tags.get("grid_point"))
               for r in children + parents if r.info.status == "RUNNING"]
    assert not running, running
    assert all(r.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents} for r in children)
    for t in done:  # each side finds the other
        run = mlflow.MlflowClient(tracking_uri).get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert run.data.metrics["test/wer"] == pytest.approx(t.user_attrs["test/wer"])
    if failing:
        failed = [t for t in trials("tiny_sweep", storage) if t.state == TrialState.FAIL]
        assert len(failed) == 1 and "BudgetError" in failed[0].user_attrs["failure_reason"]
        failed_runs = [r for r in children if r.info.status == "FAILED"]
        assert len(failed_runs) == 1 and "3%" in failed_runs[0].data.tags["failure_reason"]


def worker_pids(driver) -> list[int]:
    """The live worker processes of a sweep driver, found by their stdout, the log the driver gave each
    (runs/logs/EXPERIMENT/worker-DRIVERPID-N.log): a driver forked from a forkserver has its workers forked
    by the same server, so they are not its children."""
    found = []
    for stdout in Path("/proc").glob("[0-9]*/fd/1"):
        try:
            target = os.readlink(stdout)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if f"/worker-{driver.pid}-" in target and target.endswith(".log"):
            found.append(int(stdout.parent.parent.name))
    return found


def sweep_storage(kind: str, tmp_path: Path, request) -> object:
    """The Optuna storage a test's sweep uses: its journal file, or the PostgreSQL test database (emptied)."""
    if kind == "postgresql":
        return request.getfixturevalue("postgres_storage")
    (tmp_path / "runs/optuna").mkdir(parents=True, exist_ok=True)  # the backend opens (creates) its file at once
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs/optuna/tiny_sweep.journal")))


ONE_POINT = FOUR_POINTS_AND_A_FAILURE.split("[[sweep.arms]]")[0].replace('grid = { "train.seed" = [0, 1] }', "") + '''
[[sweep.arms]]
name = "dense"
set = { method = "dense" }
'''


TWO_POINTS = FOUR_POINTS_AND_A_FAILURE.split('[[sweep.arms]]\nname = "impossible"')[0]


def sweep_command(exp: Path, uri: str, *options: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), str(exp), "--tracking-uri", uri, "--no-analysis", *options]


def run_sweep(command: list[str], cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`command` (`python sweep.py ...`) run to its end, like subprocess.run with captured text output, but
    forked from this test process's preloaded server (study/runtime/forkserver.py), which then forks the
    sweep's workers too: a fresh interpreter and its own server would import torch and MLflow twice more.
    A launch the test signals or joins while it runs: `start_sweep`."""
    assert command[:2] == [sys.executable, str(ROOT / "sweep.py")], command
    return _run_forked("sweep", command[2:], command, cwd, env, timeout, "sweep-driver")


def start_sweep(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
    """`command` (`python sweep.py ...`) started and left running, forked as `run_sweep` forks it, its output
    to `log`. The tests use what subprocess.Popen and the forked process share: pid, poll, wait,
    send_signal, kill."""
    assert command[:2] == [sys.executable, str(ROOT / "sweep.py")], command
    return _start_forked("sweep", command[2:], command, cwd, log, env, "sweep-driver")


def run_python(args: list[str], cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS...` (a script, -m and a module, or -c and code) run to its end as `run_sweep` runs a
    launch: forked from the preloaded server, so that it does not import torch again
    (tests/script_runner.py runs it as __main__)."""
    return _run_forked("tests.script_runner", args, [sys.executable, *args], cwd, env, timeout, _name_of(args))


def start_python(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None):
    """`run_python`'s command started and left running, like `start_sweep`."""
    return _start_forked("tests.script_runner", args, [sys.executable, *args], cwd, log, env, _name_of(args))


def _name_of(args: list[str]) -> str:
    return {"-m": args[1].rsplit(".", 1)[-1], "-c": "python-c"}.get(args[0]) or Path(args[0]).stem


def _needs_a_fresh_interpreter(env: dict[str, str] | None) -> bool:
    """A PYTHONPATH of its own brings start-up hooks (tests/faults/sitecustomize.py): only a fresh interpreter
    runs them."""
    return env is not None and env.get("PYTHONPATH") != os.environ.get("PYTHONPATH")


def _run_forked(module: str, args: list[str], command: list[str], cwd: Path, env: dict[str, str] | None,
                timeout: float, name: str) -> subprocess.CompletedProcess:
    """`module.main(args)` in a child of the preloaded server, reported as `command`; its output captured as
    text. `command` itself runs in a fresh interpreter where `env` needs one or there is no forkserver."""
    if _needs_a_fresh_interpreter(env) or not forkserver.available():
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="forked-output-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        child = forkserver.ForkedProcess(module, args, out, env or dict(os.environ), name, cwd=cwd, err_log=err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        return subprocess.CompletedProcess(command, code, out.read_text(), err.read_text())


def _start_forked(module: str, args: list[str], command: list[str], cwd: Path, log: Path,
                  env: dict[str, str] | None, name: str):
    """`_run_forked`'s child, left running, its output to `log`."""
    if _needs_a_fresh_interpreter(env) or not forkserver.available():
        with open(log, "w") as out:
            return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return forkserver.ForkedProcess(module, args, log, env or dict(os.environ), name, cwd=cwd)


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen) -> Path:
    deadline = time.time() + 180
    while not (found := list((folder / "runs/trials").glob("*/*/checkpoint.pt"))):  # an epoch has gone by
        assert time.time() < deadline and proc.poll() is None, (
            "the trial never finished an epoch: " + "".join(p.read_text()[-2000:] for p in folder.glob("*.log")))
        time.sleep(0.2)
    return found[0]


# Waits shortened for the subprocesses (study/sweep/timing.py keeps them consistent): a trial nobody took
# up is settled 6 s after it started, instead of 5 minutes.
QUICK_TIMING = {"SWEEP_RETRY_SECONDS": "2", "SWEEP_HEARTBEAT_SECONDS": "0.5", "SWEEP_STALE_SECONDS": "6",
                "SWEEP_REQUEUE_SECONDS": "1", "SWEEP_PHASE_POLL_SECONDS": "0.5", "SWEEP_PROGRESS_BEAT_SECONDS": "0.5"}


# Trials that stay mid-training for seconds at the cost of a few epochs: each step takes at least 0.2 s,
# asleep (a tiny epoch is about 5 steps of well under 0.1 s of work)
PACED = {"SWEEP_MIN_STEP_SECONDS": "0.2"}


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int, optional: bool = False) -> Iterator[Path | None]:
    """A tmpfs of `megabytes` mounted at `folder`: a disk that can really fill up. Needs root; without it
    the test is skipped (or gets None, if `optional`), and fails under CI=1, where .ci/run runs as root."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        if os.environ.get("CI"):
            raise AssertionError(f"cannot mount a tmpfs at {folder}: {mounted.stderr.strip()}")
        if optional:
            yield None
            return
        missing_service(f"mounting a tmpfs needs root ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Writes a file into `folder` until its file system has no byte left."""
    filler, block = folder / "filler", b"\0" * (1 << 16)
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as out:
        while True:
            out.write(block)
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as out:
        while True:  # the last partial block, byte by byte
            out.write(b"\0")
    return filler


def finished_run(tracking_uri: str, experiment: str = "tiny"):
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, runs

