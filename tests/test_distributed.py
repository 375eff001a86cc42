"""Several processes per trial: a 2-process DDP trial on the CPU (gloo), started as torchrun starts it."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import mlflow
import pytest

from study.config import dumps_toml, to_dict
from study.sweep.experiment_file import load_experiment
from study.tracking.trial_record import trial_dir
from study.trial import run_trial
from study.runtime import forkserver
from tests.helpers import DDP_EPOCHS, DDP_SETTINGS, PACED, losses, run_python, start_python

pytestmark = pytest.mark.slow  # processes started, trials trained end to end

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_trial_matches_one_process_and_leaves_one_run(ddp_reference, tmp_path):
    """`python -m study.distributed_trial EXPERIMENT.toml --set train.processes=2 ...` (the form started by
    hand on several machines): run_trial relaunches it under torchrun, as it does a sweep's trial. Same
    global batches: each rank trains half of every batch and DDP averages the gradients, so the training
    loss follows the one-process run (dropout and SpecAugment off: the batch split is the only difference);
    rank 0 alone logs, evaluates and exports, so the store holds one run."""
    uri = ddp_reference["tracking_uri"]
    client = mlflow.MlflowClient(uri)
    (ddp,) = client.search_runs([client.get_experiment_by_name("tiny_sweep").experiment_id])
    assert ddp.info.status == "FINISHED"
    assert {k: ddp.data.params[k] for k in DDP_SETTINGS} == {k: str(v) for k, v in DDP_SETTINGS.items()}  # the --set
    assert list(Path(ddp_reference["runs_dir"]).glob("trials/*/*/distributed_config.toml"))  # relaunched under torchrun

    one_process = load_experiment(ddp_reference["experiment"]).config(
        extra={**DDP_SETTINGS, "train.processes": 1, "train.epochs": DDP_EPOCHS})
    single = run_trial(one_process, f"sqlite:///{tmp_path / 'single.db'}", runs_dir=tmp_path / "single")
    one, two = losses(f"sqlite:///{tmp_path / 'single.db'}", single.run_id), losses(uri, ddp.info.run_id)
    assert len(one) == len(two) == DDP_EPOCHS and two[-1] < two[0]
    assert two != one  # the ranks really split the batches (float sums in another order)
    assert two == pytest.approx(one, rel=0.03)  # not closer: each rank normalises BatchNorm and CTC by its share
    gap = client.get_metric_history(ddp.info.run_id, "train/rank_weight_gap")
    assert [m.value for m in gap] == [0.0]  # rank 1 ended with rank 0's parameters, bit for bit
    assert ddp.data.metrics["params/total"] == single.metrics["params/total"]


def test_a_killed_ddp_trial_resumes_every_rank_from_its_checkpoint_in_the_same_run(tiny_config, tracking_uri, tmp_path):
    """SIGKILL of the process that launched the trial (as when a sweep worker is lost) after the first
    checkpoint: torchrun and both ranks go with it; the same command resumes the trial: one MLflow run,
    every epoch logged. A rank that did not resume would train more epochs than rank 0 and wait forever
    for it, so finishing at all shows that both resumed."""
    epochs = tiny_config.train.epochs = 4  # killed after the first, paced: three left to resume
    tiny_config.train.processes = 2
    config = tmp_path / "trial.toml"
    config.write_text(dumps_toml(to_dict(tiny_config)))
    runs = tmp_path / "runs"
    command = ["-m", "study.distributed_trial", "--resolved", str(config),
               "--tracking-uri", tracking_uri, "--runs-dir", str(runs)]
    checkpoint = trial_dir(tiny_config, runs) / "checkpoint.pt"
    first = start_python(command, REPO, tmp_path / "first.log", env={**os.environ, **PACED})
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # torchrun and the ranks run in sessions of their own
    first.wait()
    assert checkpoint.is_file(), "the trial wrote no checkpoint before it was killed"
    time.sleep(3)  # torchrun dies with its parent, the ranks notice (they watch theirs every 0.5 s)
    assert not (checkpoint.parent / "DONE").exists()  # nothing finished the trial behind our back

    resumed = run_python(command, REPO)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri)
    runs_found = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs_found) == 1 and runs_found[0].info.status == "FINISHED"
    resumed_from = int(runs_found[0].data.tags["resumed_from_epoch"])
    assert 1 <= resumed_from < epochs
    steps = [m.step for m in client.get_metric_history(runs_found[0].info.run_id, "train/loss")]
    assert sorted(set(steps)) == list(range(1, epochs + 1)) and len(steps) <= epochs + 1  # at most the epoch in flight twice


def _gap_on_rank(rank: int, init_file: str, results: str) -> None:
    import torch
    import torch.distributed as dist

    from study.runtime.distributed import weight_gap_to_rank0
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)  # the same weights on both ranks
    gaps = [weight_gap_to_rank0(model)]
    if rank == 1:
        with torch.no_grad():
            model.weight[2, 1] += 0.25  # rank 1 drifts
    gaps.append(weight_gap_to_rank0(model))
    Path(results, f"rank{rank}.txt").write_text(" ".join(map(str, gaps)))
    dist.destroy_process_group()


def test_the_rank_weight_gap_is_the_largest_difference_from_rank_0(tmp_path):
    ranks = [forkserver.context().Process(target=_gap_on_rank, args=(rank, str(tmp_path / "init"), str(tmp_path)))
             for rank in (0, 1)]  # forked from the preloaded server: torch is not imported twice more
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(120)
        assert rank.exitcode == 0
    for rank in (0, 1):  # every rank gets the same answer
        assert [float(g) for g in (tmp_path / f"rank{rank}.txt").read_text().split()] == [0.0, 0.25]
