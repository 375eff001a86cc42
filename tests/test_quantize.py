"""`python -m study.quantize`: a finished run's model exported to ONNX, quantised to int8, and both decoded
on the run's test split and timed; the float export decodes as the trial's own evaluation did."""
from __future__ import annotations

import mlflow
import pytest

from analysis.bundle import from_store
from analysis.report import TABLES, write_outputs
from study import quantize
from study.data.prepared import prepare_data
from study.trial import run_trial

pytestmark = pytest.mark.slow  # a trial, an ONNX export checked against PyTorch, and its quantisation


def test_a_runs_model_in_float_and_int8_is_decoded_timed_and_logged(tiny_config, tracking_uri, tmp_path):
    tiny_config.train.epochs = 4
    result = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    assert quantize.quantize_experiment("tiny", tracking_uri, threads=1, rounds=1) == [result.run_id]
    metrics = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data.metrics
    assert set(quantize.METRICS) <= set(metrics)
    words = sum(len(u.text.split()) for u in prepare_data(tiny_config)["test"].utterances)
    assert abs(metrics["onnx/test_wer"] - metrics["test/wer"]) <= 1 / words  # the export decodes as PyTorch did
    assert 0 <= metrics["int8/test_wer"] and metrics["int8/latency_ms_b1_10s"] > 0 and metrics["onnx/latency_ms_b1_10s"] > 0
    assert quantize.quantize_experiment("tiny", tracking_uri, threads=1, rounds=1) == []  # measured once

    inputs = from_store("tiny", tracking_uri)
    (row,) = TABLES["int8"](inputs).rows.itertuples()  # one setting: the dense model
    assert (row.onnx_wer_mean, row.int8_wer_mean) == (metrics["onnx/test_wer"], metrics["int8/test_wer"])
    assert row.speedup == pytest.approx(metrics["onnx/latency_ms_b1_10s"] / metrics["int8/latency_ms_b1_10s"])
    written = write_outputs(inputs, tmp_path / "figures")
    assert tmp_path / "figures" / "tiny" / "int8.png" in written and tmp_path / "figures" / "tiny" / "int8.md" in written


def test_int8_weights_take_a_quarter_of_the_bytes(tmp_path):
    import onnx
    import torch
    from study.config import ModelConfig
    from study.export import export
    from study.model import dense_widths
    from study.model.conformer import ConformerCTC
    from study.model.io import save_model
    cfg = ModelConfig(d_model=64, num_heads=2, ffn_dim=256, conv_channels=64, num_blocks=2)
    model = ConformerCTC(cfg, 80, 29)
    save_model(tmp_path / "model.pt", cfg, model, dense_widths(cfg), {"feature_mean": torch.zeros(80),
               "feature_std": torch.ones(80), "tokenizer": {"units": "char"}})
    float_path = export(tmp_path / "model.pt", tmp_path / "model.onnx")
    int8_path = quantize.quantize_int8(float_path, tmp_path / "model.int8.onnx")
    weights = {init.name: init.data_type for init in onnx.load(str(int8_path)).graph.initializer}
    assert onnx.TensorProto.INT8 in set(weights.values())
    assert int8_path.stat().st_size < 0.5 * float_path.stat().st_size
