"""A trial's key (its folder, whose DONE result is reused) follows every file of the study package, not
only the dense recipe's; recipe_key (dense-model reuse) still follows the recipe's code alone."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from study.tracking import code_identity, mlflow_runs, trial_record
from study.tracking.code_identity import PACKAGE_ROOT, package_source_hash


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the study package, to edit without touching the real one."""
    copy = tmp_path / "study"
    shutil.copytree(PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_package_hash_is_of_its_files_not_of_where_it_lies(package, tmp_path):
    elsewhere = shutil.copytree(package, tmp_path / "another" / "checkout" / "study")
    assert package_source_hash(elsewhere) == package_source_hash(package)


@pytest.mark.parametrize("edited", ["method/adaptive_dropout.py", "evaluation/decoding.py", "trial.py"])
def test_an_edit_anywhere_in_the_package_changes_its_hash(package, edited):
    before = package_source_hash(package)
    with open(package / edited, "a") as source:
        source.write("\n# a changed comment is a changed file\n")
    assert package_source_hash(package) != before


def test_a_new_file_in_the_package_changes_its_hash(package):
    before = package_source_hash(package)
    (package / "method" / "another_method.py").write_text("")
    assert package_source_hash(package) != before


def test_the_trial_key_follows_the_package_and_the_recipe_key_does_not(tiny_config, monkeypatch):
    keys = {}
    for package_hash in ("0" * 16, "1" * 16):
        for module in (trial_record, mlflow_runs, code_identity):  # as if each process had loaded other code
            monkeypatch.setattr(module, "LOADED_PACKAGE_HASH", package_hash)
        keys[package_hash] = trial_record.trial_key(tiny_config), code_identity.recipe_key(tiny_config)
    (trial_a, recipe_a), (trial_b, recipe_b) = keys.values()
    assert trial_a != trial_b and recipe_a == recipe_b
