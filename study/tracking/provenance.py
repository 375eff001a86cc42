"""Where and with what a run was made, recorded on it as `env.*` tags so that every published table
and figure can say so (the analysis writes them as a provenance card): the machine's CPU, cores and
threads, the GPU if any, the Python and library versions, and a hash of the package's code beside the
git commit (`code_version`), which says nothing about uncommitted edits."""
from __future__ import annotations

import os
import platform
from importlib import metadata

LIBRARIES = ("torch", "torchaudio", "optuna", "mlflow")
TAG_PREFIX = "env."


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_tags(package_hash: str) -> dict[str, str]:
    import torch
    tags = {"cpu": cpu_model(), "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "python": platform.python_version(), "code_hash": package_hash}
    for library in LIBRARIES:
        try:
            tags[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            tags[library] = "absent"
    return {TAG_PREFIX + key: value for key, value in tags.items()}
