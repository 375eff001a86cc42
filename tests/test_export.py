"""Deployment export: a pruned model as ONNX (run by ONNX Runtime alone) and as a torch.export program."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from study.config import ModelConfig, TextConfig
from study.data.batching import normalise
from study.data.sentences import generate_sentences
from study.data.tokenizer import CharTokenizer, build_tokenizer
from study.evaluation.decoding import greedy_decode
from study.method.adaptive_dropout import AdlSettings
from study.method.attach import adl_decisions, attach_adls
from study.method.pruning import prune
from study.model.conformer import ConformerCTC
from study.model.io import save_model
from tests.helpers import run_python

CFG = ModelConfig(d_model=32, num_heads=4, ffn_dim=48, conv_channels=24, conv_kernel=5, num_blocks=2,
                  subsampling=4, front_end="conv2d", subsampling_channels=8)


def pruned_model_file(tmp_path: Path, cfg: ModelConfig, tokenizer=None) -> tuple[Path, ConformerCTC, torch.Tensor, torch.Tensor]:
    tokenizer = tokenizer or CharTokenizer()
    torch.manual_seed(0)
    model = ConformerCTC(cfg, 40, tokenizer.vocab_size)
    layers = attach_adls(model, ["ffn", "mhsa", "conv"], AdlSettings())
    for layer in layers:
        layer.beta.data = torch.randn_like(layer.beta) * 2.0  # about half of the units cut, heads of unequal sizes
    query, value = layers[2], layers[3]  # block 0's (groups: ffn1, ffn2, query, value, conv)
    head = cfg.d_model // cfg.num_heads
    query.beta.data[:head], value.beta.data[:head] = -10.0, 10.0  # head 0: values, no queries (pooled when deployed)
    pruned, widths = prune(model.eval(), cfg, adl_decisions(model))
    mean, std = torch.randn(40), torch.rand(40) + 0.5
    path = tmp_path / "model.pt"
    save_model(path, cfg, pruned, widths, {"feature_mean": mean, "feature_std": std, "tokenizer": tokenizer.state()})
    return path, pruned, mean, std


@pytest.mark.slow
@pytest.mark.parametrize("front_end, subsampling, input_norm, units",
                         [("conv2d", 4, "none", "char"), ("conv1d", 8, "utterance", "bpe")])
def test_onnx_export_runs_in_onnx_runtime_alone_and_matches_pytorch(tmp_path, front_end, subsampling, input_norm, units):
    """The exported model's log-probabilities match PyTorch's, and its units file (or sentencepiece model)
    turns ONNX Runtime's output into the text PyTorch decodes, with neither torch nor this package."""
    cfg = ModelConfig(**{**CFG.__dict__, "front_end": front_end, "subsampling": subsampling, "input_norm": input_norm})
    tokenizer = CharTokenizer() if units == "char" else build_tokenizer(
        TextConfig(units="bpe", bpe_vocab_size=40), generate_sentences(200, np.random.default_rng(0)), tmp_path)
    path, pruned, mean, std = pruned_model_file(tmp_path, cfg, tokenizer)
    done = run_python(["-m", "study.export", str(path)], tmp_path)  # forked: torch is not imported again
    assert done.returncode == 0, done.stderr[-2000:]
    onnx_path = path.with_suffix(".onnx")
    table = json.loads(path.with_suffix(".units.json").read_text())
    assert onnx_path.is_file() and table["units"] == units
    if units == "char":
        assert len(table["classes"]) == tokenizer.vocab_size and table["classes"][0] == ""  # class 0: the blank
        assert "".join(table["classes"][i] for i in tokenizer.encode("turn on the lights")) == "turn on the lights"
    else:
        assert path.with_suffix(".spm").read_bytes() == tokenizer.model_proto

    feats, lengths = torch.randn(3, 523, 40), torch.tensor([523, 400, 77])
    np.save(tmp_path / "feats.npy", feats.numpy())
    np.save(tmp_path / "lengths.npy", lengths.numpy())
    script = f"""
import json, sys, numpy as np, onnxruntime
session = onnxruntime.InferenceSession({str(onnx_path)!r}, providers=["CPUExecutionProvider"])
log_probs, out_lengths = session.run(None, {{"feats": np.load({str(tmp_path / 'feats.npy')!r}),
                                             "lengths": np.load({str(tmp_path / 'lengths.npy')!r})}})
np.save({str(tmp_path / 'onnx_out.npy')!r}, log_probs)
table = json.load(open({str(path.with_suffix('.units.json'))!r}))
texts = []
for frames, n in zip(log_probs, out_lengths):  # greedy CTC: best class per frame, repeats merged, blanks dropped
    best = frames[:n].argmax(-1)
    ids = [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
    if table["units"] == "char":
        texts.append("".join(table["classes"][i] for i in ids))
    else:
        import sentencepiece
        spm = sentencepiece.SentencePieceProcessor(model_file={str(path.with_suffix('.spm'))!r})
        texts.append(spm.decode([i - 1 for i in ids]))
json.dump(texts, open({str(tmp_path / 'onnx_texts.json')!r}, "w"))
assert not any(m.startswith(("study", "torch")) for m in sys.modules)  # the runtime alone
"""
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-2000:]
    with torch.no_grad():
        expected, out_lengths = pruned(normalise(feats, lengths, mean, std), lengths)
    got = torch.from_numpy(np.load(tmp_path / "onnx_out.npy"))
    assert got.shape == expected.shape
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(got[b, :n], expected[b, :n], rtol=1e-5, atol=1e-4)
    texts = json.loads((tmp_path / "onnx_texts.json").read_text())
    assert texts == greedy_decode(expected, out_lengths, tokenizer) and any(texts)


@pytest.mark.slow
def test_torch_export_program_and_a_missing_file(tmp_path, capsys):
    from study.export import main
    path, pruned, mean, std = pruned_model_file(tmp_path, CFG)
    assert main([str(path), "--format", "torch-export"]) == 0
    program = torch.export.load(path.with_suffix(".pt2")).module()
    feats, lengths = torch.randn(2, 300, 40), torch.tensor([300, 250])
    with torch.no_grad():
        torch.testing.assert_close(program(feats, lengths)[0], pruned(normalise(feats, lengths, mean, std), lengths)[0],
                                   rtol=1e-5, atol=1e-4)
    assert main([str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt: model file not found" in capsys.readouterr().err
