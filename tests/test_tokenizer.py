"""CTC output units: BPE round trip and caching, and a BPE model that decodes on its own once exported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import torch

from study.config import TextConfig
from study.data.sentences import generate_sentences
from study.data.tokenizer import (
    BpeTokenizer,
    CharTokenizer,
    build_tokenizer,
    tokenizer_from_state,
)
from study.evaluation.error_rates import word_error_rate

REPO = Path(__file__).resolve().parents[1]
TRAIN = generate_sentences(300, np.random.default_rng(0))


def test_bpe_round_trip_keeps_every_word_error(tmp_path):
    bpe = build_tokenizer(TextConfig(units="bpe", bpe_vocab_size=96), TRAIN, tmp_path)
    assert isinstance(bpe, BpeTokenizer) and bpe.vocab_size == 97  # pieces + the blank
    references = generate_sentences(40, np.random.default_rng(1))  # unseen sentences, same vocabulary
    hypotheses = [" ".join(r.split()[1:]) + " Extra, Words!" for r in references]  # edits, case, punctuation
    for transcripts in (references, hypotheses):
        ids = [bpe.encode(t) for t in transcripts]
        assert all(ids) and min(min(i) for i in ids) >= 1  # 0 is the CTC blank
        assert sum(map(len, ids)) < 0.6 * sum(map(len, transcripts))  # subwords: far fewer targets than characters
    decoded = [bpe.decode(bpe.encode(h)) for h in hypotheses]
    assert word_error_rate(references, decoded) == word_error_rate(references, hypotheses) > 0
    assert word_error_rate(references, [bpe.decode(bpe.encode(r)) for r in references]) == 0.0
    assert bpe.decode([0, *bpe.encode("turn on the lights"), 0]) == "turn on the lights"


def test_bpe_model_is_cached_per_transcripts_and_size(tmp_path):
    cfg = TextConfig(units="bpe", bpe_vocab_size=64)
    first = build_tokenizer(cfg, TRAIN, tmp_path)
    cached = list((tmp_path / "tokenizers").glob("*.model"))
    assert len(cached) == 1
    assert build_tokenizer(cfg, TRAIN, tmp_path).model_proto == first.model_proto == cached[0].read_bytes()
    build_tokenizer(cfg, TRAIN[:200], tmp_path)
    build_tokenizer(TextConfig(units="bpe", bpe_vocab_size=80), TRAIN, tmp_path)
    assert len(list((tmp_path / "tokenizers").glob("*.model"))) == 3
    assert isinstance(build_tokenizer(TextConfig(units="char"), TRAIN, tmp_path), CharTokenizer)
    restored = tokenizer_from_state(first.state())
    assert restored.encode(TRAIN[0]) == first.encode(TRAIN[0])
    assert isinstance(tokenizer_from_state(None), CharTokenizer)  # models exported before units were saved


def test_exported_bpe_model_decodes_in_a_fresh_interpreter(tiny_config, tracking_uri, tmp_path):
    """A trial with BPE units and the 8x front end; its model.pt alone reproduces the logged hypotheses."""
    from study.data.prepared import prepare_data
    from study.trial import run_trial
    tiny_config.text.units, tiny_config.text.bpe_vocab_size = "bpe", 48
    tiny_config.model.subsampling = 8
    run_id = run_trial(tiny_config, tracking_uri, runs_dir=tmp_path).run_id
    client = mlflow.MlflowClient(tracking_uri)
    model_path = client.download_artifacts(run_id, "model.pt", str(tmp_path))
    logged = [line[len("HYP: "):] for line in
              Path(client.download_artifacts(run_id, "test_examples.txt", str(tmp_path))).read_text().splitlines()
              if line.startswith("HYP: ")]
    test = prepare_data(tiny_config)["test"]
    torch.save([f.float() for f in test.features], tmp_path / "feats.pt")
    script = f"""
import sys, torch
from study.model.io import load_model
from study.data.tokenizer import tokenizer_from_state
model, saved = load_model({model_path!r})
tokenizer = tokenizer_from_state(saved["tokenizer"])
assert tokenizer.units == "bpe" and model.head.out_features == tokenizer.vocab_size == 49
for feats in torch.load({str(tmp_path / 'feats.pt')!r}):
    x = ((feats - saved["feature_mean"]) / saved["feature_std"])[None]
    log_probs, lengths = model(x, torch.tensor([x.shape[1]]))
    ids = torch.unique_consecutive(log_probs[0, :int(lengths[0])].argmax(-1)).tolist()
    print("HYP:", tokenizer.decode(ids))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line[len("HYP: "):] for line in done.stdout.splitlines()] == logged
