"""Export a trained (possibly pruned) model for deployment: `python -m study.export MODEL.pt --format onnx`.

The exported graph maps raw log-mel features to CTC log-probabilities with the training feature
normalisation built in, so a runtime needs neither this package nor torch:
    inputs   feats (B, T, n_mels) float32 log-mel (25 ms windows, 10 ms hop), lengths (B,) int64
    outputs  log_probs (B, T', V) float32, out_lengths (B,) int64   (T' = frames after the front end)
Batch and frame counts are dynamic. Beside the model go the output units (`<out>.units.json`: class
i's text, class 0 the CTC blank; greedy decoding merges repeats and drops blanks) and, for BPE, the
sentencepiece model (`<out>.spm`). `--format torch-export` writes a torch.export program (`.pt2`).
Every export is checked against PyTorch on random inputs of two lengths (max |difference| <= 1e-4).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from study.data.batching import normalise
from study.model.conformer import ConformerCTC, with_uniform_heads
from study.model.io import load_model

TOLERANCE = 1e-4


class Deployable(torch.nn.Module):
    """The model with its feature normalisation: raw log-mel in, CTC log-probabilities out; unequal
    attention heads held as zero-padded equal ones (the same outputs, a dense model's graph)."""

    def __init__(self, model: ConformerCTC, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = with_uniform_heads(model)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(normalise(feats, lengths, self.mean, self.std), lengths)


def example_inputs(n_mels: int, frames: int = 1000, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 (a batch of 1 would be specialised into the graph), the second utterance shorter."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch, frames, n_mels, generator=generator),
            torch.tensor([frames] + [frames - 100 * (i + 1) for i in range(batch - 1)]))


def units_table(saved: dict) -> dict:
    """What each output class means, for a runtime that decodes without this package."""
    state = saved.get("tokenizer") or {"units": "char"}
    if state["units"] == "char":
        from study.data.text import decode
        return {"units": "char", "classes": [""] + [decode([i]) for i in range(1, saved["vocab_size"])]}
    return {"units": "bpe", "classes": None, "note": "class i > 0 is sentencepiece piece i - 1 (see the .spm file)"}


def export(model_path: Path, out: Path, fmt: str = "onnx") -> Path:
    model, saved = load_model(model_path)
    deployable = Deployable(model, saved["feature_mean"], saved["feature_std"]).eval()
    inputs = example_inputs(model.n_mels)
    dynamic = {"feats": {0: torch.export.Dim("batch"), 1: torch.export.Dim("frames", min=16, max=100_000)},
               "lengths": {0: torch.export.Dim("batch")}}
    if fmt == "onnx":
        torch.onnx.export(deployable, inputs, out, dynamo=True, dynamic_shapes=dynamic, verbose=False,
                          external_data=False,  # one self-contained file (models here are far below 2 GB)
                          input_names=["feats", "lengths"], output_names=["log_probs", "out_lengths"])
    else:
        torch.export.save(torch.export.export(deployable, inputs, dynamic_shapes=dynamic), out)
    out.with_suffix(".units.json").write_text(json.dumps(units_table(saved)))
    if (saved.get("tokenizer") or {}).get("units") == "bpe":
        out.with_suffix(".spm").write_bytes(saved["tokenizer"]["model"].numpy().tobytes())
    worst = max_difference(deployable, out, fmt)
    if worst > TOLERANCE:
        raise RuntimeError(f"{out}: outputs differ from PyTorch's by up to {worst:.2e} (tolerance {TOLERANCE})")
    return out


def run_exported(path: Path, fmt: str, threads: int = 0):
    """A callable (feats, lengths) -> log_probs over the exported file, in its runtime. `threads` > 0 fixes
    ONNX Runtime's thread count and stops its threads spinning between calls (they would otherwise take
    the cores from whatever runs next, e.g. the other runtimes of an interleaved benchmark)."""
    if fmt == "onnx":
        import onnxruntime
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda feats, lengths: torch.from_numpy(
            session.run(["log_probs"], {"feats": feats.numpy(), "lengths": lengths.numpy()})[0])
    program = torch.export.load(path).module()
    return lambda feats, lengths: program(feats, lengths)[0]


@torch.no_grad()
def max_difference(deployable: Deployable, path: Path, fmt: str) -> float:
    """Largest |exported - PyTorch| over the real frames of two batches of other lengths than the example's."""
    run = run_exported(path, fmt)
    worst = 0.0
    for frames in (1600, 437):
        feats, lengths = example_inputs(deployable.model.n_mels, frames, batch=3)
        expected, out_lengths = deployable(feats, lengths)
        got = run(feats, lengths)
        for b, n in enumerate(out_lengths.tolist()):
            worst = max(worst, float((got[b, :n] - expected[b, :n]).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="an exported model.pt (a trial's artifact)")
    parser.add_argument("--format", choices=("onnx", "torch-export"), default="onnx")
    parser.add_argument("--out", type=Path, help="output file (default: beside MODEL, .onnx or .pt2)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: {args.model}: model file not found", file=sys.stderr)
        return 2
    out = args.out or args.model.with_suffix(".onnx" if args.format == "onnx" else ".pt2")
    export(args.model, out, args.format)
    print(f"wrote {out} (checked against PyTorch: max difference <= {TOLERANCE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
