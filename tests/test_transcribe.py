"""`python -m study.transcribe`: a model file turns audio files, or a manifest's, into the text the
evaluation decodes from the same audio, with the features the model file says it was trained on."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile
import torch

from study.config import Config, build
from study.data.audio import load_audio
from study.data.features import mean_std
from study.data.prepared import prepare_data
from study.data.tokenizer import CharTokenizer
from study.evaluation.decoding import transcribe
from study.model import dense_widths
from study.model.io import save_model
from study.trial_context import build_model
from study.training import batch_frames
from study import transcribe as transcribe_command
from tests.helpers import TINY_RECIPE


def test_a_model_file_transcribes_audio_as_the_evaluation_decodes_it(corpus_cache, tmp_path, capsys):
    """An untrained model (its outputs are arbitrary but not empty, so every character counts) with other
    feature settings than the defaults: 40 mel bins and a 12.5 ms hop must travel in the file."""
    recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "cache_dir": str(corpus_cache)},
              "features": {"n_mels": 40, "hop_ms": 12.5}}
    cfg = build(Config, recipe)
    data = prepare_data(cfg)
    mean, std = mean_std(data["train"].features)
    tokenizer = CharTokenizer()
    model = build_model(cfg, tokenizer.vocab_size).eval()
    path = tmp_path / "model.pt"
    save_model(path, cfg.model, model, dense_widths(cfg.model), {"feature_mean": mean, "feature_std": std,
               "tokenizer": tokenizer.state(), "features": asdict(cfg.features)})
    test = data["test"]
    expected = transcribe(model, test, tokenizer, mean, std, torch.device("cpu"), batch_frames(cfg))
    assert all(expected)  # arbitrary characters, none empty

    paths = [u.path for u in test.utterances]
    got = transcribe_command.transcribe_utterances(str(path), transcribe_command.audio_utterances(paths),
                                                   batch_seconds=cfg.train.batch_seconds)
    assert got == expected

    # the CLI on a NeMo manifest of the same audio, one file resampled to 8 kHz, with the references
    low = tmp_path / "low.wav"
    soundfile.write(low, load_audio(paths[0], 8000).numpy(), 8000)
    manifest = tmp_path / "test.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": p, "duration": u.duration, "text": u.text}) + "\n"
                                for p, u in zip([str(low), *paths[1:]], test.utterances)))
    out = tmp_path / "hyps.tsv"
    assert transcribe_command.main([str(path), "--manifest", str(manifest), "--out", str(out),
                                    "--batch-seconds", str(cfg.train.batch_seconds)]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [r[0] for r in rows] == [str(low.with_suffix("")), *(Path(p).with_suffix("").as_posix() for p in paths[1:])]
    assert [r[1] for r in rows[1:]] == expected[1:]
    assert f"{len(paths)} utterances with transcripts: WER " in capsys.readouterr().err


def test_bad_input_exits_2_naming_it(tmp_path, capsys):
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    assert transcribe_command.main([str(tmp_path / "model.pt"), str(tmp_path / "junk.wav")]) == 2
    assert "junk.wav: cannot read audio" in capsys.readouterr().err
    soundfile.write(tmp_path / "ok.wav", np.zeros(1600, np.float32), 16000)
    assert transcribe_command.main([str(tmp_path / "missing.pt"), str(tmp_path / "ok.wav")]) == 2
    assert "missing.pt" in capsys.readouterr().err
