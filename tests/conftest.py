"""Shared fixtures: a tiny built-in corpus (generated once per session) and a tiny recipe."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.config import Config, build

TINY_RECIPE = {
    "data": {"synthetic": {"train_utterances": 24, "dev_utterances": 4, "test_utterances": 4,
                           "min_words": 3, "max_words": 5, "rate_min": 150, "rate_max": 180}},
    "text": {"units": "char"},  # 24 utterances: too few for a BPE vocabulary (tests that need one set it)
    "model": {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "conv_channels": 32, "conv_kernel": 5,
              "num_blocks": 1, "subsampling": 4, "front_end": "conv2d", "subsampling_channels": 8, "dropout": 0.1},
    "train": {"epochs": 3, "batch_seconds": 12.0, "lr": 3e-3, "warmup_fraction": 0.1, "threads": 1},
    "tracking": {"experiment": "tiny"},
}


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """One cache folder for the session, so the tiny corpus and its features are made once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_config(corpus_cache: Path) -> Config:
    recipe = {**TINY_RECIPE, "data": {**TINY_RECIPE["data"], "cache_dir": str(corpus_cache)}}
    return build(Config, recipe)


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
