"""Shared look of the figures (fonts, one colour and marker per method) and their atomic writing.

Figures are drawn on matplotlib.figure.Figure objects, never through pyplot, so no backend or global
state is touched in the process that imports this (sweep.py calls the analysis in-process).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

CONTROLLER = "adaptive_dropout/controller"  # adaptive dropout with adl.target_reduction: drawn as its own method
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 9.5, "figure.titlesize": 13, "axes.grid": True,
         "grid.alpha": 0.3, "savefig.dpi": 150, "pdf.fonttype": 3}
METHOD_LOOK = {  # colour, marker, label
    "dense": ("black", "s", "dense"),
    "small_dense": ("tab:green", "D", "small dense"),
    "retrain_pruned": ("teal", "p", "pruned architecture, retrained"),
    "magnitude_structured": ("tab:orange", "^", "magnitude, structured"),
    "magnitude_unstructured": ("tab:red", "v", "magnitude, unstructured"),
    "activation_structured": ("goldenrod", "<", "weight x activation, structured"),
    "taylor_structured": ("sienna", ">", "first-order Taylor, structured"),
    "adaptive_dropout": ("tab:blue", "o", "adaptive dropout, paper's regulariser (α)"),
    CONTROLLER: ("tab:purple", "P", "adaptive dropout, budget controller"),
}
# For a second, third... variant of one method (other settings): colours no method uses.
VARIANT_LOOKS = (("tab:brown", "X"), ("tab:pink", "*"), ("tab:olive", "p"), ("tab:cyan", "h"), ("tab:gray", "<"))
SERIES_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                  "tab:olive", "tab:cyan", "tab:gray")
FORMATS = ("png", "pdf")


def method_look(method: str) -> tuple[str, str, str]:
    return METHOD_LOOK.get(method, ("tab:gray", "x", method))


@contextlib.contextmanager
def style() -> Iterator[None]:
    """rcParams are read as artists are made, so drawing and saving both happen inside this."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(ncols: int = 1, width: float = 7.5, height: float = 4.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def si_scale(largest: float) -> tuple[float, str]:
    """A factor and prefix that put numbers up to `largest` in a readable range (1.2 M, 340 k)."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= factor:
            return factor, prefix
    return 1.0, ""


def save(fig: Figure, stem: Path, note: str = "") -> list[Path]:
    """Writes stem.png and stem.pdf, with `note` (the provenance card) in their metadata; each goes to a
    temporary name first and is renamed once complete, so an interrupted run never leaves half a figure
    behind."""
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        tmp = path.with_name(f".{path.name}.tmp")
        # Without a creation date the PDF is the same bytes each time it is regenerated.
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        if note:
            metadata["Subject" if fmt == "pdf" else "Description"] = note
        try:
            fig.savefig(tmp, format=fmt, metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def write_text(path: Path, text: str) -> Path:
    """Like save, for text: write a temporary file, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
