"""One entry point for every corpus: the train/dev/test utterance lists of a DataConfig."""
from __future__ import annotations

from pathlib import Path

from study.config import DataConfig
from study.data.manifest import DataError, Utterance

SPLITS = ("train", "dev", "test")


def load_splits(cfg: DataConfig) -> dict[str, list[Utterance]]:
    """Lists every split and checks it (paths, transcripts, audio headers) before any training."""
    if cfg.source == "synthetic":
        from study.data.synthetic import build_synthetic_corpus
        splits = build_synthetic_corpus(cfg.synthetic, Path(cfg.cache_dir))
    elif cfg.source == "librispeech":
        from study.data.librispeech import load_librispeech
        if not cfg.root:
            raise DataError("data.root: the LibriSpeech folder must be given for data.source = 'librispeech'")
        splits = {name: load_librispeech(cfg.root, subsets, cfg.cache_dir) for name, subsets in
                  (("train", cfg.train_subsets), ("dev", cfg.dev_subsets), ("test", cfg.test_subsets))}
    elif cfg.source == "manifest":
        from study.data.manifest_source import load_manifest_splits
        splits = load_manifest_splits(cfg.manifest)
    else:
        from study.data.fsdd import load_fsdd
        if not cfg.root:
            raise DataError("data.root: the FSDD recordings folder must be given for data.source = 'fsdd'")
        f = cfg.fsdd
        splits = load_fsdd(cfg.root, split_by=f.split_by, dev_indices=f.dev_indices, test_indices=f.test_indices,
                           dev_speakers=f.dev_speakers, test_speakers=f.test_speakers)
    for name in SPLITS:
        if not splits.get(name):
            raise DataError(f"split {name!r} of data source {cfg.source!r} is empty")
    return splits


def load_extra_tests(cfg: DataConfig) -> dict[str, list[Utterance]]:
    """Further test sets evaluated separately (LibriSpeech test-other beside test-clean)."""
    if cfg.extra_test_subsets and cfg.source != "librispeech":
        raise DataError(f"data.extra_test_subsets: only for data.source = 'librispeech', not {cfg.source!r}")
    from study.data.librispeech import load_librispeech
    return {subset: load_librispeech(cfg.root, [subset], cfg.cache_dir) for subset in cfg.extra_test_subsets}
