"""Real training on the tiny built-in corpus: the loss falls, runs resume, failures are loud."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import mlflow
import pytest
import torch

from study.runtime import stop_request
from study.tracking.code_identity import package_source_hash
from study.training import Trainer, TrainingError
from study.trial import run_trial
from tests.helpers import finished_run, losses, start_python


def test_tiny_training_run_lowers_loss_and_logs_to_mlflow(tiny_config, tracking_uri, tmp_path):
    tiny_config.train.epochs = 4
    metrics = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path).metrics
    client, runs = finished_run(tracking_uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = losses(tracking_uri, runs[0].info.run_id)
    assert len(history) == 4 and history[-1] < 0.8 * history[0]
    for key in ("dev/wer", "test/wer", "test/cer", "params/total", "params/encoder", "time/train_s"):
        assert key in runs[0].data.metrics and math.isfinite(runs[0].data.metrics[key])
    assert runs[0].data.metrics["params/total"] == metrics["params/total"] > metrics["params/encoder"]
    assert runs[0].data.params["model.d_model"] == "32" and runs[0].data.tags["method"] == "dense"
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"config.toml", "model.pt", "test_utterance_errors.json"} <= artifacts
    errors = json.loads(Path(client.download_artifacts(runs[0].info.run_id, "test_utterance_errors.json",
                                                       str(tmp_path))).read_text())
    assert len(errors["ids"]) == len(errors["errors"]) == len(errors["words"]) == 4  # the tiny test split
    assert sum(errors["errors"]) / sum(errors["words"]) == pytest.approx(metrics["test/wer"])  # a corpus WER
    tags = runs[0].data.tags  # where and with what it ran, for the provenance of every table it reaches
    assert tags["env.torch"] == torch.__version__.split("+")[0] and tags["env.threads"] == "1"  # train.threads
    assert tags["env.cores"] == str(os.cpu_count()) and tags["env.cpu"] and tags["env.gpu"] == (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    assert tags["env.code_hash"] == package_source_hash() and len(tags["env.code_hash"]) == 16


def test_interrupted_run_resumes_from_its_last_epoch_and_matches_an_uninterrupted_one(
        tiny_config, tracking_uri, tmp_path, monkeypatch):
    reference = run_trial(tiny_config, f"sqlite:///{tmp_path / 'ref.db'}", runs_dir=tmp_path / "ref").metrics

    original = Trainer.train_epoch
    def crash_in_third_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # like Ctrl-C or a kill during epoch 3
        return original(self, epoch)
    monkeypatch.setattr(Trainer, "train_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny_config, tracking_uri, runs_dir=tmp_path / "run")
    client, runs = finished_run(tracking_uri)
    assert runs[0].info.status == "KILLED"  # never left RUNNING

    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path / "run").metrics
    client, runs = finished_run(tracking_uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same run, continued
    assert runs[0].data.tags["resumed_from_epoch"] == "2"
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss"))
    assert steps == [1, 2, 3]
    assert resumed["test/cer"] == pytest.approx(reference["test/cer"])
    assert resumed["dev/wer"] == pytest.approx(reference["dev/wer"])


STOPS = {
    # a kill (or Ctrl-C) as epoch 2 begins: resumed from the end of epoch 1
    "kill-after-an-epoch": ({"alpha": 0.5}, "resumed_from_epoch", "1"),
    # SIGTERM in epoch 2's second step: checkpointed at its end, resumed from there
    "sigterm-mid-epoch": ({"target_reduction": 0.5, "gate": "hard_concrete", "tau": 0.6667, "polarise": 0.5},
                          "resumed_from_step", "2 of epoch 2"),
}


@pytest.mark.parametrize("stop", STOPS)
def test_stopped_adaptive_dropout_trial_resumes_to_the_same_final_weights(stop, tiny_config, tmp_path, monkeypatch):
    """Mask noise, dropout and SpecAugment after a resume are the draws the uninterrupted run made (the noise
    pool restarts from every epoch's seed; a mid-epoch checkpoint holds the pool and the generators), so the
    final pruned model is bit-identical."""
    settings, tag, value = STOPS[stop]
    tiny_config.method = "adaptive_dropout"
    for key, setting in settings.items():
        setattr(tiny_config.adl, key, setting)
    reference = run_trial(tiny_config, f"sqlite:///{tmp_path / 'ref.db'}", runs_dir=tmp_path / "ref")

    original = Trainer.train_epoch
    def stopped_in_second_epoch(self, epoch):
        if epoch == 1 and stop == "kill-after-an-epoch":
            raise KeyboardInterrupt
        if epoch == 1:
            assert self.steps_per_epoch >= 3  # so that step 2 is mid-epoch
            on_step, calls = self.on_step, []
            def sigterm_in_second_step(t):
                calls.append(t)
                if len(calls) == 2:
                    os.kill(os.getpid(), signal.SIGTERM)  # handled between two bytecodes: during this step
                on_step(t)
            self.on_step = sigterm_in_second_step
        return original(self, epoch)
    monkeypatch.setattr(Trainer, "train_epoch", stopped_in_second_epoch)
    uri = f"sqlite:///{tmp_path / 'run.db'}"
    previous = signal.getsignal(signal.SIGTERM)
    stop_request.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_trial(tiny_config, uri, runs_dir=tmp_path / "run")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_request.clear()
    client, runs = finished_run(uri)
    assert runs[0].info.status == "KILLED"
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = run_trial(tiny_config, uri, runs_dir=tmp_path / "run")
    client, runs = finished_run(uri)
    assert len(runs) == 1 and runs[0].data.tags[tag] == value  # the same run, resumed where it stopped

    def final_weights(uri: str, run_id: str, folder: Path) -> dict[str, torch.Tensor]:
        path = mlflow.MlflowClient(uri).download_artifacts(run_id, "model.pt", str(folder))
        return torch.load(path, weights_only=False)["state_dict"]
    ref_weights = final_weights(f"sqlite:///{tmp_path / 'ref.db'}", reference.run_id, tmp_path / "a")
    new_weights = final_weights(uri, resumed.run_id, tmp_path / "b")
    assert ref_weights.keys() == new_weights.keys()
    assert all(torch.equal(ref_weights[k], new_weights[k]) for k in ref_weights)
    assert resumed.metrics["dev/wer"] == reference.metrics["dev/wer"]
    assert losses(uri, resumed.run_id) == losses(f"sqlite:///{tmp_path / 'ref.db'}", reference.run_id)


def test_a_kill_between_done_and_the_runs_end_closes_the_run_without_training_again(
        tiny_config, tracking_uri, tmp_path, monkeypatch):
    import study.trial
    from study.tracking import trial_record
    tiny_config.train.epochs = 1
    original = trial_record.record_done

    def killed_after_done(folder, result):
        original(folder, result)
        raise KeyboardInterrupt  # the kill lands after DONE, before the run is ended
    monkeypatch.setattr(study.trial, "record_done", killed_after_done)
    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    client, runs = finished_run(tracking_uri)
    assert runs[0].info.status == "KILLED"
    done = json.loads(next(tmp_path.glob("trials/*/*/DONE")).read_text())
    assert not list(tmp_path.glob("trials/*/*/DONE.tmp"))  # written whole, by a rename

    monkeypatch.setattr(study.trial, "record_done", original)
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a: pytest.fail("trained a finished trial again"))
    again = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    client, runs = finished_run(tracking_uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert again.run_id == done["run_id"] and again.metrics == done["metrics"]


def test_a_run_left_running_by_an_attempt_killed_before_recording_it_is_closed_by_the_next(
        tiny_config, tracking_uri, tmp_path):
    """SIGKILL between creating a trial's run and recording it in the trial's folder leaves a RUNNING run that
    no later attempt would resume; the next attempt at the same trial closes it, and only it."""
    from study.names import TAG_ROLE, TAG_TRIAL_KEY
    from study.tracking.store import ensure_experiment
    from study.tracking.trial_record import trial_dir
    tiny_config.train.epochs = 1
    client = mlflow.MlflowClient(tracking_uri)
    experiment = ensure_experiment(tracking_uri, tiny_config.tracking.experiment)
    key = trial_dir(tiny_config, tmp_path).name
    orphan = client.create_run(experiment, tags={TAG_TRIAL_KEY: key, TAG_ROLE: "trial"}).info.run_id
    other = client.create_run(experiment, tags={TAG_TRIAL_KEY: "another-trial", TAG_ROLE: "trial"}).info.run_id
    result = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    closed = client.get_run(orphan)
    assert closed.info.status == "FAILED" and closed.data.tags["failure_reason"].startswith("orphaned")
    assert client.get_run(other).info.status == "RUNNING"  # another trial's run is not this attempt's to close
    finished = client.get_run(result.run_id)
    assert finished.info.status == "FINISHED" and finished.data.tags[TAG_TRIAL_KEY] == key


def test_trial_key_changes_with_the_training_code(tiny_config, monkeypatch):
    from study.tracking import trial_record
    before = trial_record.trial_key(tiny_config)
    monkeypatch.setattr(trial_record, "LOADED_PACKAGE_HASH", "0" * 16)
    assert trial_record.trial_key(tiny_config) != before


def test_non_finite_loss_fails_the_run_with_its_reason(tiny_config, tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.CTCLoss, "forward", lambda self, *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingError, match="non-finite CTC loss"):
        run_trial(tiny_config, tracking_uri, runs_dir=tmp_path)
    _, runs = finished_run(tracking_uri)
    assert runs[0].info.status == "FAILED"
    assert "non-finite" in runs[0].data.tags["failure_reason"]


def test_librispeech_layout_with_an_extra_test_set_reports_it_separately(tiny_config, tracking_uri, tmp_path):
    """A LibriSpeech tree (made from the tiny corpus's FLAC files): test-clean is test/wer and
    test-other, evaluated by the same trial, is test-other/wer."""
    from study.data.synthetic import build_synthetic_corpus
    splits = build_synthetic_corpus(tiny_config.data.synthetic, Path(tiny_config.data.cache_dir))
    root = tmp_path / "LibriSpeech"
    layout = {"train-clean-100": splits["train"], "dev-clean": splits["dev"],
              "test-clean": splits["test"][:2], "test-other": splits["test"][2:]}
    for chapter, (subset, utts) in enumerate(layout.items()):
        folder = root / subset / "7" / str(chapter)
        folder.mkdir(parents=True)
        lines = []
        for i, utt in enumerate(utts):
            (folder / f"7-{chapter}-{i:04d}.flac").symlink_to(utt.path)
            lines.append(f"7-{chapter}-{i:04d} {utt.text.upper()}")
        (folder / f"7-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    tiny_config.data.source, tiny_config.data.root = "librispeech", str(root)
    tiny_config.data.extra_test_subsets = ["test-other"]
    tiny_config.train.epochs = 1
    metrics = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path).metrics
    for key in ("test/wer", "test-other/wer", "test-other/cer"):
        assert 0.0 <= metrics[key] and math.isfinite(metrics[key])
    _, runs = finished_run(tracking_uri)
    assert "test-other/wer" in runs[0].data.metrics


def test_step_hook_runs_before_each_forward_pass_with_that_steps_training_fraction(tiny_config, tmp_path):
    """The ADL temperature and hard phase are set by this hook, so a step must never see the previous one's."""
    from study.data.features import mean_std
    from study.data.prepared import prepare_data
    from study.data.tokenizer import build_tokenizer
    from study.trial_context import build_model
    train = prepare_data(tiny_config)["train"]
    tokenizer = build_tokenizer(tiny_config.text, train.transcripts, tiny_config.data.cache_dir)
    model = build_model(tiny_config, tokenizer.vocab_size)
    events = []
    model.register_forward_pre_hook(lambda *_: events.append("forward"))
    trainer = Trainer(tiny_config, model, train, tokenizer, *mean_std(train.features), tmp_path / "c.pt",
                      torch.device("cpu"), epochs=2, on_step=lambda t: events.append(t))
    trainer.train_epoch(1)
    n = trainer.steps_per_epoch
    assert events == [x for step in range(n) for x in ((n + step) / (2 * n), "forward")]


def test_phase_clock_accounts_for_every_step_of_the_epoch(tiny_config, tmp_path):
    """`benchmarks/gpu_throughput.py --phases`: each step passes through every phase once, and the
    phases add up to the epoch's wall time."""
    import time

    from study.data.features import mean_std
    from study.data.prepared import prepare_data
    from study.data.tokenizer import build_tokenizer
    from study.training import PhaseClock
    from study.trial_context import build_model
    train = prepare_data(tiny_config)["train"]
    tokenizer = build_tokenizer(tiny_config.text, train.transcripts, tiny_config.data.cache_dir)
    model = build_model(tiny_config, tokenizer.vocab_size)
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(trainer.clock.last))
    trainer = Trainer(tiny_config, model, train, tokenizer, *mean_std(train.features), tmp_path / "c.pt",
                      torch.device("cpu"), epochs=1)
    trainer.clock = PhaseClock()
    start = time.perf_counter()
    metrics = trainer.train_epoch(0)
    wall = time.perf_counter() - start
    seconds = trainer.clock.seconds
    assert list(seconds) == ["epoch start", "data", "forward", "loss", "backward", "optimizer", "bookkeeping"]
    assert 0.9 * wall <= sum(seconds.values()) <= wall and seconds["backward"] > 0
    assert len(forwards) == trainer.steps_per_epoch and len(set(forwards)) == len(forwards)  # marked anew each step
    assert math.isfinite(metrics["train/loss"])


@pytest.mark.slow
def test_two_processes_needing_the_same_untrained_dense_source_train_it_once(tiny_config, tracking_uri, tmp_path):
    """Two magnitude trials started at once, in two processes, before their dense source exists (as two
    sweep workers do): one trains the dense model, the other waits for it instead of training it beside
    the first into the same checkpoint, and both prune the same dense run."""

    from study.config import dumps_toml, to_dict
    from study.data.prepared import prepare_data
    prepare_data(tiny_config)  # the corpus and the store made first, as the sweep's driver does
    mlflow.MlflowClient(tracking_uri).search_experiments()
    tiny_config.train.epochs = 2
    tiny_config.method = "magnitude_structured"
    paths = []
    for reduction in (0.3, 0.5):
        tiny_config.prune.target_reduction = reduction
        paths.append(tmp_path / f"magnitude-{reduction}.toml")
        paths[-1].write_text(dumps_toml(to_dict(tiny_config)))
    procs = [start_python(["-m", "study.distributed_trial", "--resolved", str(p), "--tracking-uri", tracking_uri,
                           "--runs-dir", str(tmp_path / "runs")], Path(__file__).resolve().parents[1],
                          p.with_suffix(".log")) for p in paths]
    for proc in procs:
        proc.wait(timeout=600)
    logs = [p.with_suffix(".log").read_text() for p in paths]
    assert [proc.returncode for proc in procs] == [0, 0], logs
    assert sum("is running in another process: waiting for it" in log for log in logs) == 1, logs
    client, runs = finished_run(tracking_uri)
    dense = [r for r in runs if r.data.tags["method"] == "dense"]
    pruned = [r for r in runs if r.data.tags["method"] == "magnitude_structured"]
    assert len(dense) == 1 and len(pruned) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["source_dense_run_id"] for r in pruned} == {dense[0].info.run_id}
