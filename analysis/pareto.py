"""The Pareto front of points where both coordinates are to be minimised (size and error rate)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def pareto_mask(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """True for each point that no other point dominates, minimising both x and y.

    A point is dominated when another is no worse in both coordinates and better in at least one.
    Identical points do not dominate each other, so duplicates on the front are all kept. Points with
    a NaN coordinate are never on the front.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got shapes {x.shape} and {y.shape}")
    mask = np.zeros(x.shape, dtype=bool)
    valid = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    order = valid[np.lexsort((y[valid], x[valid]))]  # by x, then y
    # Sweeping by x then y, every earlier distinct point has x no larger, so it dominates this one
    # exactly when its y is no larger: track the smallest y over earlier distinct points.
    best_y, start = np.inf, 0
    while start < len(order):
        end = start
        while end < len(order) and x[order[end]] == x[order[start]] and y[order[end]] == y[order[start]]:
            end += 1  # a run of identical points shares one verdict
        here = y[order[start]]
        mask[order[start:end]] = here < best_y
        best_y = min(best_y, here)
        start = end
    return mask


def front(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The front's points sorted by x, ready to draw as a step line."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    on = pareto_mask(x, y)
    order = np.lexsort((y[on], x[on]))
    return x[on][order], y[on][order]
