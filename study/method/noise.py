"""Logistic noise for the relaxed masks, drawn in bulk and reused at random offsets.

A frame-level mask needs one logistic value log(u) - log(1 - u) per element, and on the CPU drawing
them cost more than the rest of the adaptive-dropout layer (an early measurement: steps 19-23% slower than
dense). A pool holds at least POOL_FACTOR times the largest draw; a draw of n values is the contiguous
slice at a random offset, so the values within one draw are distinct pool entries and independent.
Before each draw, n / REFRESH pool entries at a random offset are drawn afresh, so the generator does
1/REFRESH of the work and the pool turns over about every POOL_FACTOR * REFRESH draws. Successive
draws share values at randomly shifted positions (a unit never meets the same value at the same frame
except by chance), which the tests bound.
"""
from __future__ import annotations

import math

import torch

POOL_FACTOR = 8
REFRESH = 8
EPS = 1e-6  # clamps u away from 0 and 1: finite noise


def logistic_(values: torch.Tensor) -> torch.Tensor:
    """Fills `values` in place with logistic noise."""
    return values.uniform_().logit_(EPS)


class LogisticNoise:
    """One pool per device, shared by every layer of a model (attach_adls makes one per model)."""

    def __init__(self, mode: str = "pooled"):  # adl.noise: pooled | fresh
        self.pooled = mode == "pooled"
        self.pools: dict[torch.device, torch.Tensor] = {}

    def reset(self) -> None:
        """Empties the pools: the next draw refills them from the generator. Called at every epoch's start,
        after the epoch's seed, so an epoch's noise depends on its seed alone and a run resumed from a
        checkpoint draws exactly what the uninterrupted run drew."""
        self.pools.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The pools as they stand mid-epoch (a checkpoint taken at a step boundary holds them)."""
        return {str(device): pool.clone() for device, pool in self.pools.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.pools = {torch.device(device): pool.to(device) for device, pool in state.items()}

    def draw(self, shape: torch.Size | tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Logistic noise of `shape` on `device`, float32 (a view into the pool: read, never write)."""
        if not self.pooled:
            return logistic_(torch.empty(shape, device=device))
        n = math.prod(shape)
        pool = self._pool(n, device)
        chunk = max(1, n // REFRESH)
        # offsets from the CPU generator: no device sync, reproducible under torch.manual_seed
        fresh = int(torch.randint(0, pool.numel() - chunk + 1, ()))
        start = int(torch.randint(0, pool.numel() - n + 1, ()))
        logistic_(pool[fresh:fresh + chunk])
        return pool[start:start + n].view(shape)

    def _pool(self, n: int, device: torch.device) -> torch.Tensor:
        pool = self.pools.get(device)
        if pool is None or pool.numel() < POOL_FACTOR * n:
            pool = logistic_(torch.empty(POOL_FACTOR * n, device=device))
            self.pools[device] = pool
        return pool
