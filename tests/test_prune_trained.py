"""Pruning a trained model: adaptive dropout from the dense model (adl.init = "dense") starts where the
dense model is, finds (or trains) the sweep's dense run of its recipe and refuses a model of other widths;
the magnitude baselines prune a model named by prune.dense_from, refused if its output units differ;
distillation from the dense teacher (adl.distill, prune.distill) is a frame-level KL that changes nothing
at weight 0."""
from __future__ import annotations

import dataclasses

import mlflow
import pytest
import torch

from study.config import Config, build
from study.data.text import vocab_size as char_vocab_size
from study.data.tokenizer import CharTokenizer
from study.method.adaptive_dropout import AdlSettings
from study.method.attach import attach_adls
from study.method.distillation import Distiller, frame_kl, frame_mse
from study.model.io import save_model
from study.model import dense_widths
from study.names import TAG_SOURCE_DENSE_RUN
from study.tracking.dense_source import check_same_units
from study.trial import run_trial
from study.trial_context import build_model
from tests.helpers import TINY_RECIPE

CONTROLLER_FROM_DENSE = {"method": "adaptive_dropout", "adl.gate": "hard_concrete", "adl.tau": 0.6667,
                         "adl.target_reduction": 0.3, "adl.init": "dense", "adl.pruning_epochs": 1}


def from_dense(cfg: Config, **changes) -> Config:
    cfg.method = "adaptive_dropout"
    for key, value in {**CONTROLLER_FROM_DENSE, **changes}.items():
        if key.startswith("adl."):
            setattr(cfg.adl, key[4:], value)
    return cfg


def test_before_its_first_step_the_model_gives_the_dense_models_outputs(tiny_config):
    """Hard concrete gates at the initial logit (p = 0.95) evaluate to exactly 1: the pruning phase starts
    from the dense model itself, not a rescaled copy of it."""
    cfg = from_dense(tiny_config)
    torch.manual_seed(0)
    dense = build_model(cfg, vocab_size=12).eval()
    student = build_model(cfg, vocab_size=12)
    student.load_state_dict(dense.state_dict())
    layers = attach_adls(student, cfg.adl.locations, AdlSettings.from_config(cfg.adl))
    assert layers and all(torch.allclose(l.retention, torch.ones_like(l.retention)) for l in layers)
    features = torch.randn(2, 60, cfg.features.n_mels)  # (B, T, F)
    lengths = torch.tensor([60, 45])
    with torch.no_grad():
        (want, want_lengths), (got, got_lengths) = dense(features, lengths), student.eval()(features, lengths)
    assert torch.equal(want_lengths, got_lengths)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # (B, T', V) log-probabilities


def test_a_from_dense_trial_trains_the_dense_run_first_and_prunes_it_in_its_own_epochs(tiny_config, tracking_uri, tmp_path):
    cfg = from_dense(tiny_config)
    result = run_trial(cfg, tracking_uri, runs_dir=tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    runs = {r.data.tags["method"]: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert set(runs) == {"dense", "adaptive_dropout"} and all(r.info.status == "FINISHED" for r in runs.values())
    pruned = runs["adaptive_dropout"]
    assert pruned.info.run_id == result.run_id
    assert pruned.data.tags["source_dense_run_id"] == runs["dense"].info.run_id
    assert pruned.data.metrics["train/epochs_total"] == cfg.train.epochs + 1  # dense epochs, then pruning
    assert len(client.get_metric_history(pruned.info.run_id, "train/loss")) == 1  # the pruning phase alone
    assert "adl/kept_fraction/ffn" in pruned.data.metrics and "adl/dev_wer_uncut" in pruned.data.metrics

    # the same configuration again, pointed at the exported dense model: it starts from it, no training of dense
    again = dataclasses.replace(cfg, adl=dataclasses.replace(cfg.adl, init_from=f"runs:/{runs['dense'].info.run_id}/model.pt",
                                                            pruning_epochs=2))
    run_trial(again, tracking_uri, runs_dir=tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert sorted(r.data.tags["method"] for r in runs) == ["adaptive_dropout", "adaptive_dropout", "dense"]
    sources = {r.data.tags["source_dense_run_id"] for r in runs if r.data.tags["method"] == "adaptive_dropout"}
    assert sources == {pruned.data.tags["source_dense_run_id"]}  # the run id named in runs:/<id>/model.pt


def test_a_start_model_of_other_widths_is_refused_naming_both_shapes(tiny_config, tracking_uri, tmp_path):
    wider = build(Config, {**TINY_RECIPE, "model": {**TINY_RECIPE["model"], "ffn_dim": 96}})
    path = tmp_path / "other.pt"
    save_model(path, wider.model, build_model(wider, vocab_size=30), dense_widths(wider.model))
    cfg = from_dense(tiny_config, **{"adl.init_from": str(path)})
    with pytest.raises(ValueError, match=r"does not fit this trial's configuration: .* is \(96, 32\) there, \(64, 32\) here"):
        run_trial(cfg, tracking_uri, runs_dir=tmp_path)
    experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name("tiny")
    assert experiment is None or not mlflow.MlflowClient(tracking_uri).search_runs([experiment.experiment_id])


def test_init_from_without_init_dense_is_refused():
    with pytest.raises(Exception, match="adl.init_from is set but adl.init"):
        build(Config, {**TINY_RECIPE, "method": "adaptive_dropout", "adl": {"init_from": "model.pt"}})


def magnitude_from(cfg: Config, model_file: str) -> Config:
    cfg.method, cfg.prune.target_reduction, cfg.prune.dense_from = "magnitude_structured", 0.3, model_file
    return cfg


def save_dense_model(cfg: Config, path, tokenizer_state: dict) -> str:
    """An (untrained) dense model of the trial's shapes, exported as a trial exports it."""
    save_model(path, cfg.model, build_model(cfg, char_vocab_size()), dense_widths(cfg.model),
               {"tokenizer": tokenizer_state})
    return str(path)


def no_runs(tracking_uri: str) -> bool:
    experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name("tiny")
    return experiment is None or not mlflow.MlflowClient(tracking_uri).search_runs([experiment.experiment_id])


def test_a_magnitude_baseline_prunes_the_model_prune_dense_from_names_without_training_dense(tiny_config, tracking_uri,
                                                                                             tmp_path):
    path = save_dense_model(tiny_config, tmp_path / "dense.pt", CharTokenizer().state())
    result = run_trial(magnitude_from(tiny_config, path), tracking_uri, runs_dir=tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])  # the whole store
    assert [r.data.tags["method"] for r in runs] == ["magnitude_structured"]  # no dense run was trained
    assert runs[0].info.run_id == result.run_id and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags[TAG_SOURCE_DENSE_RUN] == path


def test_a_given_dense_model_of_other_output_units_is_refused_before_the_run(tiny_config, tracking_uri, tmp_path):
    bpe = {"units": "bpe", "model": torch.tensor([1, 2, 3], dtype=torch.uint8)}  # the trial's units are char
    path = save_dense_model(tiny_config, tmp_path / "bpe.pt", bpe)
    with pytest.raises(ValueError, match=r"prune.dense_from .*bpe.pt has other output units: bpe there, char here"):
        run_trial(magnitude_from(tiny_config, path), tracking_uri, runs_dir=tmp_path)
    assert no_runs(tracking_uri)
    other_bpe = {"units": "bpe", "model": torch.tensor([1, 2], dtype=torch.uint8)}
    with pytest.raises(ValueError, match="BPE models trained on other transcripts or with another bpe_vocab_size"):
        check_same_units(other_bpe, bpe, "adl.init_from model.pt")


def test_a_wrong_prune_dense_from_is_refused_naming_the_knob(tiny_config, tracking_uri, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"prune.dense_from: no file .*missing.pt"):
        run_trial(magnitude_from(tiny_config, str(tmp_path / "missing.pt")), tracking_uri, runs_dir=tmp_path)
    assert no_runs(tracking_uri)


def test_prune_dense_from_on_a_method_that_prunes_no_dense_model_is_refused():
    with pytest.raises(Exception, match="prune.dense_from names the dense model a pruning baseline"):
        build(Config, {**TINY_RECIPE, "method": "adaptive_dropout", "prune": {"dense_from": "model.pt"}})


def test_frame_kl_is_zero_for_the_same_posteriors_and_ignores_padded_frames():
    torch.manual_seed(0)
    teacher = torch.randn(2, 7, 5).log_softmax(-1)  # (B, T, V)
    student = torch.randn(2, 7, 5).log_softmax(-1)
    lengths = torch.tensor([7, 4])
    assert frame_kl(teacher, teacher, lengths) == 0
    by_hand = sum((teacher[b, t].exp() * (teacher[b, t] - student[b, t])).sum() for b in range(2) for t in range(lengths[b]))
    torch.testing.assert_close(frame_kl(student, teacher, lengths), by_hand / 11)
    padded = student.clone()
    padded[1, 4:] = torch.randn(3, 5).log_softmax(-1)  # frames past the second utterance's end
    assert torch.equal(frame_kl(padded, teacher, lengths), frame_kl(student, teacher, lengths))


def _trained_weights(cfg: Config, folder, distill: float | None, hidden: float = 0.0) -> dict[str, torch.Tensor]:
    from study.data.features import mean_std
    from study.data.prepared import prepare_data
    from study.data.tokenizer import build_tokenizer
    from study.training import Trainer
    train = prepare_data(cfg)["train"]
    tokenizer = build_tokenizer(cfg.text, train.transcripts, cfg.data.cache_dir)
    torch.manual_seed(0)
    teacher = build_model(cfg, tokenizer.vocab_size)
    model = build_model(cfg, tokenizer.vocab_size)
    trainer = Trainer(cfg, model, train, tokenizer, *mean_std(train.features), folder / "c.pt", torch.device("cpu"),
                      epochs=1, distiller=None if distill is None else Distiller(teacher, distill, hidden))
    metrics = trainer.train_epoch(0)
    assert ("train/distill" in metrics) == (distill is not None)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_distillation_with_weight_0_trains_bit_identically_to_none(tiny_config, tmp_path):
    without = _trained_weights(tiny_config, tmp_path, None)
    weight_0 = _trained_weights(tiny_config, tmp_path, 0.0)
    weight_1 = _trained_weights(tiny_config, tmp_path, 1.0)
    hidden_1 = _trained_weights(tiny_config, tmp_path, 0.0, hidden=1.0)
    both = _trained_weights(tiny_config, tmp_path, 1.0, hidden=1.0)
    assert all(torch.equal(without[k], weight_0[k]) for k in without)
    for acted in (weight_1, hidden_1):  # each term does act, and differently
        assert not all(torch.equal(without[k], acted[k]) for k in without)
    assert not all(torch.equal(weight_1[k], both[k]) for k in without)


def test_frame_mse_ignores_padded_frames():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 7, 4), torch.randn(2, 7, 4)  # (B, T, D) block outputs
    lengths = torch.tensor([7, 4])
    assert frame_mse(teacher, teacher, lengths) == 0
    by_hand = sum((student[b, t] - teacher[b, t]).pow(2).mean() for b in range(2) for t in range(lengths[b]))
    torch.testing.assert_close(frame_mse(student, teacher, lengths), by_hand / 11)
    padded = student.clone()
    padded[1, 4:] = 100.0  # frames past the second utterance's end
    assert torch.equal(frame_mse(padded, teacher, lengths), frame_mse(student, teacher, lengths))


def test_the_block_output_term_matches_the_chosen_blocks_of_the_model_in_training(tiny_config):
    """Two blocks, the second chosen: the term is the MSE between the two models' outputs of that block;
    watching another student moves the hooks to it."""
    tiny_config.model.num_blocks = 2
    torch.manual_seed(0)
    teacher, student, other = (build_model(tiny_config, vocab_size=12) for _ in range(3))
    for model in (teacher, student, other):
        torch.nn.init.normal_(model.encoder.blocks[1].ffn1.w1.weight)  # the three models differ
    distiller = Distiller(teacher, 0.0, hidden=2.0, blocks=[1])
    distiller.watch(student)
    seen = {}
    for name, model in (("teacher", teacher), ("student", student)):
        model.encoder.blocks[1].register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
    features, lengths = torch.randn(2, 60, tiny_config.features.n_mels), torch.tensor([60, 41])  # (B, T, F)
    log_probs, out_lengths = student(features, lengths)
    loss = distiller.loss(features, lengths, log_probs, out_lengths)
    torch.testing.assert_close(loss, 2.0 * frame_mse(seen["student"], seen["teacher"], out_lengths))
    loss.backward()
    assert student.encoder.blocks[1].ffn1.w1.weight.grad.abs().sum() > 0  # it trains the student
    distiller.watch(other)
    assert len(student.encoder.blocks[1]._forward_hooks) == 1  # this test's own: the distiller's is gone
    other_log_probs, other_lengths = other(features, lengths)
    assert distiller.loss(features, lengths, other_log_probs, other_lengths) != loss


def test_block_distillation_settings_are_checked():
    with pytest.raises(Exception, match="adl.distill and adl.distill_hidden need a dense teacher"):
        build(Config, {**TINY_RECIPE, "method": "adaptive_dropout", "adl": {"distill_hidden": 1.0}})
    with pytest.raises(Exception, match="prune.distill_blocks: block 1 does not exist"):
        build(Config, {**TINY_RECIPE, "method": "magnitude_structured",
                       "prune": {"target_reduction": 0.5, "distill_hidden": 1.0, "distill_blocks": [0, 1]}})


def test_the_controller_from_dense_then_fine_tunes_the_pruned_model_with_the_teacher(tiny_config, tracking_uri, tmp_path):
    """adl.pruning_epochs with the gates, then adl.finetune_epochs on the pruned architecture, fixed: the teacher
    (both terms) stays for the fine-tuning."""
    cfg = from_dense(tiny_config, **{"adl.distill": 1.0, "adl.distill_hidden": 1.0, "adl.finetune_epochs": 1})
    result = run_trial(cfg, tracking_uri, runs_dir=tmp_path)
    metrics = mlflow.MlflowClient(tracking_uri).get_run(result.run_id).data.metrics
    assert metrics["train/distill"] > 0 and metrics["finetune/train/distill"] > 0


@pytest.mark.parametrize("term", ["distill", "distill_hidden"])
def test_a_distilled_magnitude_fine_tuning_logs_its_term(tiny_config, tracking_uri, tmp_path, term):
    tiny_config.method = "magnitude_structured"
    tiny_config.prune.target_reduction, tiny_config.prune.finetune_epochs = 0.3, 1
    setattr(tiny_config.prune, term, 1.0)
    run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    client = mlflow.MlflowClient(tracking_uri)
    runs = {r.data.tags["method"]: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert runs["magnitude_structured"].data.metrics["finetune/train/distill"] > 0
