"""Adaptive-dropout pruning of Conformer speech recognisers: the library."""
from study.runtime.environment import require_consistent_environment

# Before torchaudio loads: a torch/torchaudio pair out of line is named here, not by the linker.
require_consistent_environment()
