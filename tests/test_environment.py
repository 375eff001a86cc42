"""The pinned torch/torchaudio pair: a drifted install is named in one line and exits 2."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from study.runtime.environment import check_environment, drift_message, exact_pins, project_requirements

ROOT = Path(__file__).resolve().parents[1]


def test_exact_pins_keep_only_exact_versions_that_apply_here():
    pins = exact_pins(["torch==2.11.0", "torchaudio==2.11.0", "optuna>=4.0,<6", "jiwer==3.*",
                       "numpy==1.0; sys_platform == 'no-such-platform'", "psycopg[binary]==3.2.1"])
    assert pins == {"torch": "2.11.0", "torchaudio": "2.11.0", "psycopg": "3.2.1"}


def test_drift_message_names_installed_and_expected_versions():
    expected = {"torch": "2.11.0", "torchaudio": "2.11.0"}
    message = drift_message(expected, {"torch": "2.11.0+cu130", "torchaudio": "2.11.1"}, "pyproject.toml")
    assert "torch 2.11.0+cu130" in message and "torchaudio 2.11.1" in message
    assert "torch==2.11.0" in message and "torchaudio==2.11.0" in message
    assert "(torchaudio differs)" in message and "\n" not in message
    assert "torchaudio (not installed)" in drift_message(expected, {"torch": "2.11.0"}, "pyproject.toml")
    assert drift_message(expected, {"torch": "2.11.0+cpu", "torchaudio": "2.11.0"}, "pyproject.toml") is None


def test_this_environment_matches_its_pins():
    check_environment()  # raises EnvironmentDrift (exit 2) otherwise
    assert {"torch", "torchaudio"} <= set(exact_pins(project_requirements()))


def test_lock_file_holds_the_pinned_pair():
    pins = exact_pins(project_requirements())
    lock = (ROOT / "requirements.lock").read_text()
    for name in ("torch", "torchaudio"):
        assert re.search(rf"^{name}=={re.escape(pins[name])}\b", lock, re.M), f"requirements.lock lacks {name}=={pins[name]}"


def test_mismatched_pair_exits_2_with_one_line(tmp_path: Path):
    """A torchaudio 2.11.1 (metadata only, found first on the path) beside the installed torch."""
    dist_info = tmp_path / "torchaudio-2.11.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.11.1\n")
    result = subprocess.run([sys.executable, "sweep.py", "--check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "installed torch 2.11.0" in lines[0] and "torchaudio 2.11.1" in lines[0]
    assert "torchaudio==2.11.0" in lines[0]
