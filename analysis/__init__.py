"""Figures and tables regenerated from the runs in MLflow, never by retraining.

    python -m analysis [EXPERIMENT ...] [--tracking-uri URI] [--out figures] [--parent-run RUN_ID]

or, from Python (sweep.py does this at the end of a sweep):

    from analysis import regenerate
    regenerate("default", tracking_uri)
"""
from __future__ import annotations

from analysis.report import regenerate
from analysis.runs import (
    AnalysisError,
    ExperimentNotFound,
    NoFinishedRuns,
    Trials,
    load_trials,
)

__all__ = ["AnalysisError", "ExperimentNotFound", "NoFinishedRuns", "Trials", "load_trials", "regenerate"]
