"""CUDA smoke test (skipped without a GPU): every method trains a short epoch on the GPU, prunes,
accounts and exports a model that loads on the CPU.

This is where device mismatches show: tensors made on the CPU meeting CUDA weights in pruning, the
baselines' plans, accounting, or the input pipeline."""
from __future__ import annotations

import math

import mlflow
import pytest
import torch

from study.trial import run_trial

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

ADL = {"method": "adaptive_dropout", "adl.beta0": 0.0, "adl.c0": -4.0, "adl.alpha": 1.0, "adl.lr": 0.5}  # prunes in one epoch
VARIANTS = {
    "dense": {},
    "dense-compiled": {"train.compile": True},
    "adl-all": ADL,
    "adl-ffn-only": {**ADL, "adl.locations": ["ffn"]},  # the other groups have no ADL: all-ones decisions
    "adl-hard-inverted": {**ADL, "adl.inference": "hard", "adl.rescale": "inverted"},
    "mag-structured": {"method": "magnitude_structured", "prune.target_reduction": 0.3, "prune.finetune_epochs": 1},
    "mag-unstructured": {"method": "magnitude_unstructured", "prune.target_reduction": 0.3},
    "small-dense": {"method": "small_dense", "prune.target_reduction": 0.3},
}


def configure(cfg, overrides: dict) -> None:
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_method_runs_on_the_gpu(name, tiny_config, tracking_uri, tmp_path):
    tiny_config.train.device = "cuda"
    tiny_config.train.epochs = 1
    configure(tiny_config, VARIANTS[name])
    result = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    metrics = result.metrics
    assert all(math.isfinite(metrics[k]) for k in ("dev/wer", "test/wer", "flops/encoder_10s", "latency/ms_b1_10s"))
    if name not in ("dense", "dense-compiled"):
        assert 0.0 < metrics["params/reduction"] < 1.0
    run = mlflow.MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["device"] == torch.cuda.get_device_name(0)
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="model.pt",
                                                tracking_uri=tracking_uri, dst_path=str(tmp_path / "export"))
    from study.model.io import load_model
    model = load_model(local)[0]
    assert next(model.parameters()).device.type == "cpu"
