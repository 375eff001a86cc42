"""Several processes per trial: a 2-process DDP trial on the CPU (gloo), started as torchrun starts it."""
from __future__ import annotations

import mlflow
import pytest

from study.trial import run_trial


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
    assert two == pytest.approx(one, rel=0.03)
    assert two != one  # the ranks really split the batches (float sums in another order)
    assert list((tmp_path / "ddp" / "trials").glob("*/*/distributed_config.toml"))  # relaunched under torchrun
    assert ddp.metrics["params/total"] == single.metrics["params/total"]
