"""The installed packages that are built against each other, checked before any of them loads.

torch and torchaudio (and the CUDA wheels torch brings) are compiled against one another: a
torchaudio built for another torch fails deep inside its C++ library ("undefined symbol ..."). The
project pins them exactly (pyproject.toml, requirements.lock); this module compares what is
installed with those pins, reading only package metadata, so a drifted environment is named in one
line instead of a linker error. See docs/installing.md.
"""
from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = "adaptive-dropout-study"
# Exact pins checked against what is installed: the project's own, then torch's (its CUDA wheels).
PACKAGES_WITH_EXACT_PINS = (PROJECT, "torch")


class EnvironmentDrift(SystemExit):
    """Exits the program with status 2 and the one-line reason."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def exact_pins(requirements: list[str]) -> dict[str, str]:
    """{name: version} of the `name==version` requirements that apply on this platform."""
    pins = {}
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
            pins[req.name] = specs[0].version
    return pins


def project_requirements() -> list[str]:
    """The project's dependencies: from its installed metadata, else from pyproject.toml beside it."""
    try:
        return metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def drift_message(expected: dict[str, str], installed: dict[str, str | None], pinned_by: str) -> str | None:
    """One line naming every pinned package whose installed version differs, or None when all match.
    Local build tags (2.11.0+cu130, 2.11.0+cpu) count as the same version."""
    wrong = [name for name, version in expected.items() if (installed.get(name) or "").split("+")[0] != version]
    if not wrong:
        return None
    found = ", ".join(f"{name} {installed.get(name) or '(not installed)'}" for name in expected)
    asked = ", ".join(f"{name}=={version}" for name, version in expected.items())
    return (f"environment drift: installed {found}; {pinned_by} pins {asked} ({', '.join(wrong)} differs); "
            f"reinstall from the lock file: pip install uv && uv pip install --compile-bytecode -e . -c requirements.lock")


def check_environment() -> None:
    """Raise EnvironmentDrift (exit status 2) when an exactly pinned package is installed at another version."""
    for package in PACKAGES_WITH_EXACT_PINS:
        requirements = project_requirements() if package == PROJECT else (
            metadata.requires(package) if installed_version(package) else [])
        expected = exact_pins(requirements or [])
        message = drift_message(expected, {name: installed_version(name) for name in expected},
                                "pyproject.toml" if package == PROJECT else f"{package} {installed_version(package)}")
        if message:
            raise EnvironmentDrift(message)


def require_consistent_environment() -> None:
    """For entry points: print the drift as one line on stderr and exit 2."""
    try:
        check_environment()
    except EnvironmentDrift as drift:
        print(f"error: {drift}", file=sys.stderr)
        raise
