"""docs/configuration.md is what `python -m study.config.reference` writes, and every key has a meaning."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from study.config import Config, ConfigError, load_config
from study.config.reference import page, tables
from study.sweep.experiment_file import ArmSpec, SweepSpec
from tests.helpers import run_python

ROOT = Path(__file__).resolve().parents[1]


def test_committed_page_is_what_the_command_writes():
    done = run_python(["-m", "study.config.reference"], ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    written = done.stdout
    assert written == page()
    assert (ROOT / "docs" / "configuration.md").read_text() == written, (
        "docs/configuration.md is stale: run python -m study.config.reference > docs/configuration.md")


@pytest.mark.parametrize("cls", [Config, SweepSpec, ArmSpec])
def test_every_key_is_on_the_page_with_a_meaning(cls):
    def keys(c: type) -> list[str]:
        hints = typing.get_type_hints(c)
        return [name for f in dataclasses.fields(c) for name in
                (keys(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else [f.name])]
    rows = [row for _, _, table in tables(cls, "") for row in table]
    assert sorted(row[0].strip("`") for row in rows) == sorted(keys(cls))
    missing = [row[0] for row in rows if not row[4]]
    assert not missing, f"keys without a one-line meaning in their knob(): {missing}"


def test_an_unknown_key_points_to_the_reference(tmp_path):
    bad = tmp_path / "exp.toml"
    bad.write_text("[adl]\ntemperature = 0.5\n")
    with pytest.raises(ConfigError, match="adl.temperature.*docs/configuration.md"):
        load_config(bad)
