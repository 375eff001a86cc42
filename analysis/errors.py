"""Why an analysis could not be made: each has its own class so callers (the CLI, sweep.py) can react."""
from __future__ import annotations


class AnalysisError(Exception):
    """Base class: the tracking store does not hold what an analysis needs."""


class ExperimentNotFound(AnalysisError):
    """An experiment (or a sweep's parent run) named on the command line is not in the store."""


class NoFinishedRuns(AnalysisError):
    """An experiment exists but none of its trial runs finished with final metrics."""
