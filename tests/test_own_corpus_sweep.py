"""A corpus the harness has never seen, brought as a stranger would: 8 kHz WAV recordings of two
utterances each, the training split a Kaldi data directory with segments, dev and test NeMo manifests.
The shipped experiments/manifest.toml (made tiny with --set) runs its dense-against-
pruned sweep on it with no code, and `study.transcribe` reads the dense run's model by run id."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from study.config import flatten
from study.data.audio import load_audio
from study.data.splits import load_splits
from study.names import TAG_METHOD
from tests.helpers import (
    ROOT,
    TINY_RECIPE,
    child_runs,
    run_python,
    run_sweep,
    sweep_command,
)

pytestmark = pytest.mark.slow  # four tiny trials and a transcription, in their own processes


def write_corpus(splits: dict, folder: Path) -> dict[str, Path]:
    """Pairs of utterances joined into 8 kHz recordings; train as a Kaldi directory, dev and test as NeMo."""
    (folder / "wav").mkdir(parents=True)
    manifests = {}
    for name, utts in splits.items():
        segments, rows = [], []
        for k in range(0, len(utts), 2):
            pair = utts[k:k + 2]
            waves = [load_audio(u.path, 8000).numpy() for u in pair]
            recording = folder / "wav" / f"{name}-{k // 2:03d}.wav"
            soundfile.write(recording, np.concatenate(waves), 8000)
            start = 0.0
            for u, wave in zip(pair, waves):
                length = len(wave) / 8000
                segments.append((f"{u.speaker}-{u.id}", recording, start, length, u))
                rows.append({"audio_filepath": f"wav/{recording.name}", "offset": start, "duration": length,
                             "text": u.text.upper() + ".", "speaker": u.speaker})
                start += length
        if name == "train":
            kaldi = folder / "data" / "train"
            kaldi.mkdir(parents=True)
            (kaldi / "wav.scp").write_text("".join(sorted({f"{r.stem} ../../wav/{r.name}\n" for _, r, *_ in segments})))
            (kaldi / "segments").write_text("".join(f"{i} {r.stem} {s:.4f} {s + n:.4f}\n" for i, r, s, n, _ in segments))
            (kaldi / "text").write_text("".join(f"{i} {u.text}\n" for i, *_, u in segments))
            (kaldi / "utt2spk").write_text("".join(f"{i} {u.speaker}\n" for i, *_, u in segments))
            manifests[name] = kaldi
        else:
            manifests[name] = folder / f"{name}.jsonl"
            manifests[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifests


def test_a_stranger_runs_dense_against_pruned_on_their_corpus(tiny_config, tmp_path):
    manifests = write_corpus(load_splits(tiny_config.data), tmp_path / "corpus")
    tiny = {**flatten({k: v for k, v in TINY_RECIPE.items() if k not in ("data", "tracking")}), "train.epochs": 2,
            "data.cache_dir": str(tmp_path / "cache"), **{f"data.manifest.{k}": str(v) for k, v in manifests.items()}}
    settings = [f"--set={key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in tiny.items()]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_sweep(sweep_command(ROOT / "experiments" / "manifest.toml", uri, "--workers", "2", *settings), tmp_path,
                     timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    runs = child_runs(uri, "manifest")[0]
    by_method = {r.data.tags[TAG_METHOD]: r for r in runs}
    assert sorted(by_method) == ["adaptive_dropout", "dense", "magnitude_structured", "small_dense"]
    assert all(r.info.status == "FINISHED" and "test/wer" in r.data.metrics for r in runs)
    dense = by_method["dense"].data.metrics["params/total"]
    for method in ("magnitude_structured", "small_dense"):
        assert by_method[method].data.metrics["params/total"] == pytest.approx(dense / 2, rel=0.05)
    assert "characters the output units cannot write" in done.stderr  # the manifests' trailing full stops

    hyps = tmp_path / "hyps.tsv"
    transcribed = run_python(["-m", "study.transcribe", by_method["dense"].info.run_id, "--manifest",
                              str(manifests["test"]), "--tracking-uri", uri, "--out", str(hyps)], tmp_path)
    assert transcribed.returncode == 0, transcribed.stderr[-3000:]
    assert len(hyps.read_text().splitlines()) == len(load_splits(tiny_config.data)["test"])
    assert "utterances with transcripts: WER" in transcribed.stderr
