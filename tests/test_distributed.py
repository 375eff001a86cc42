"""Several processes per trial: a 2-process DDP trial on the CPU (gloo), started as torchrun starts it."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import mlflow
import pytest

from study.config import dumps_toml, to_dict
from study.tracking.trial_record import trial_dir
from study.trial import run_trial
from study.runtime import forkserver
from tests.helpers import FOUR_POINTS, PACED, run_python, start_python, write_experiment

pytestmark = pytest.mark.slow  # processes started, trials trained end to end

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_trial_matches_one_process_and_leaves_one_run(tiny_config, tracking_uri, tmp_path):
    """Same global batches: each rank trains half of every batch and DDP averages the gradients, so the
    training loss follows the one-process run (dropout and SpecAugment off: the batch split is the
    only difference); rank 0 alone logs, evaluates and exports, so the store holds one run."""
    tiny_config.train.epochs = 3
    tiny_config.model.dropout = 0.0
    tiny_config.features.freq_masks = tiny_config.features.time_masks = 0
    single_uri = f"sqlite:///{tmp_path / 'single.db'}"
    single = run_trial(tiny_config, single_uri, runs_dir=tmp_path / "single")
    tiny_config.train.processes = 2
    ddp = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path / "ddp")

    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_id == ddp.run_id
    assert runs[0].data.params["train.processes"] == "2"

    def losses(uri: str, run_id: str) -> list[float]:
        history = mlflow.MlflowClient(uri).get_metric_history(run_id, "train/loss")
        return [m.value for m in sorted(history, key=lambda m: m.step)]
    one, two = losses(single_uri, single.run_id), losses(tracking_uri, ddp.run_id)
    assert len(one) == len(two) == 3 and two[-1] < two[0]
    assert two != one  # the ranks really split the batches (float sums in another order)
    assert two == pytest.approx(one, rel=0.03)  # not closer: each rank normalises BatchNorm and CTC by its share
    gap = client.get_metric_history(ddp.run_id, "train/rank_weight_gap")
    assert [m.value for m in gap] == [0.0]  # rank 1 ended with rank 0's parameters, bit for bit
    assert list((tmp_path / "ddp" / "trials").glob("*/*/distributed_config.toml"))  # relaunched under torchrun
    assert ddp.metrics["params/total"] == single.metrics["params/total"]


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


def test_an_experiment_file_with_overrides_runs_as_a_distributed_trial(tmp_path, corpus_cache):
    """`python -m study.distributed_trial EXPERIMENT.toml --set KEY=VALUE ...`, the form started by hand on
    several machines: the file's base configuration with the overrides, as one two-rank trial."""
    exp = write_experiment(tmp_path, corpus_cache, FOUR_POINTS)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_python(["-m", "study.distributed_trial", str(exp), "--set", "train.processes=2", "--set", "train.epochs=2",
                       "--set", "model.ffn_dim=48", "--tracking-uri", uri, "--runs-dir", str(tmp_path / "runs")], REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_sweep").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["train.processes"], params["train.epochs"], params["model.ffn_dim"]) == ("2", "2", "48")
    assert run.data.metrics["train/rank_weight_gap"] == 0.0


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
