"""Which code a result comes from: hashes of the package's source as this process loaded it, and the
recipe key of a dense model. Apart from mlflow_runs.py so that computing them imports no MLflow."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from study.config import Config, identity

# The code a trained dense model depends on, beside its configuration: a dense run trained by other
# model or training code has another recipe key, so magnitude pruning never reuses it silently.
RECIPE_SOURCES = ("model/conformer.py", "training.py", "data/prepared.py", "data/features.py",
                  "data/batching.py", "data/text.py", "data/tokenizer.py")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # study/


def _source_hash(root: Path, relatives: Iterable[str]) -> str:
    """sha256 (16 hex digits) of the files `relatives` under `root` as they are on disk."""
    digest = hashlib.sha256()
    for relative in relatives:
        digest.update(relative.encode() + b"\0" + (root / relative).read_bytes())
    return digest.hexdigest()[:16]


def recipe_source_hash() -> str:
    """The hash of RECIPE_SOURCES: the code a dense model depends on."""
    return _source_hash(PACKAGE_ROOT, RECIPE_SOURCES)


def package_source_hash(root: Path = PACKAGE_ROOT) -> str:
    """The hash of every .py file of the package at `root`: the code a trial's result depends on."""
    files = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.py")
                   if path.is_file())  # not an editor's dangling lock link
    return _source_hash(root, files)


# Taken when this process imports the code, not when a trial first asks: a worker that started before
# the files were edited runs the old code and must say so (it used to hash the edited files and retrain
# a dense model that its own code had already trained).
LOADED_SOURCE_HASH = recipe_source_hash()
LOADED_PACKAGE_HASH = package_source_hash()


def recipe_key(cfg: Config) -> str:
    """What a dense model depends on (data, features, units, model, training, and the code that trains it;
    not where it ran): equal keys, same dense run."""
    tree = identity(cfg)
    recipe = {k: tree[k] for k in ("data", "features", "text", "model", "train")}
    recipe["source"] = LOADED_SOURCE_HASH
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
