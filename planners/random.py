"""Space-filling strategies: uniform random and scrambled Sobol, for continuous spaces and pools."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy.stats import qmc

from athanor.messages import Candidate
from athanor.planners.base import Observation
from athanor.planners.space import DesignSpace
from athanor.spec import Objective


class _SpaceFilling:
    name = "space-filling"

    def __init__(self, space: DesignSpace, objectives: Sequence[Objective] = (), seed: int = 0, **_options: object):
        self.space = space
        self.objectives = list(objectives)
        self.seed = seed

    def _unit_points(self, n: int, n_before: int) -> np.ndarray:
        raise NotImplementedError

    def propose(self, history: list[Observation], n: int, pending: list[Observation]) -> list[Candidate]:
        n_before = len(history) + len(pending)
        if not self.space.is_pool:
            points = self.space.from_unit(self._unit_points(n, n_before))
            return [Candidate(inputs=p, rationale=f"{self.name} point {n_before + i + 1}") for i, p in enumerate(points)]
        taken = {o.pool_index for o in [*history, *pending] if o.pool_index is not None}
        free = np.array([i for i in range(len(self.space.pool)) if i not in taken], dtype=int)
        chosen = self._pick_rows(free, min(n, len(free)), n_before)
        return [
            Candidate(inputs=self.space.pool_inputs(i), pool_index=int(i),
                      rationale=f"{self.name} choice among {len(free)} unmeasured pool rows")
            for i in chosen
        ]

    def _pick_rows(self, free: np.ndarray, n: int, n_before: int) -> list[int]:
        """Snap space-filling points to the nearest still-free pool row, one row per point."""
        unit = self.space.pool_unit()
        points = self._unit_points(n, n_before)
        chosen: list[int] = []
        available = list(free)
        for point in points:
            distances = np.linalg.norm(unit[available] - point, axis=1)
            chosen.append(int(available.pop(int(np.argmin(distances)))))
        return chosen


class RandomStrategy(_SpaceFilling):
    """Uniform random design; in a pool, rows drawn without replacement."""

    name = "random"

    def _rng(self, n_before: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, n_before])

    def _unit_points(self, n: int, n_before: int) -> np.ndarray:
        return self._rng(n_before).random((n, self.space.dim))

    def _pick_rows(self, free: np.ndarray, n: int, n_before: int) -> list[int]:
        return [int(i) for i in self._rng(n_before).choice(free, size=n, replace=False)]


class SobolStrategy(_SpaceFilling):
    """Scrambled Sobol sequence, continued across requests so the design stays low-discrepancy."""

    name = "sobol"

    def _unit_points(self, n: int, n_before: int) -> np.ndarray:
        engine = qmc.Sobol(d=self.space.dim, scramble=True, seed=self.seed)
        if n_before:  # scipy rejects fast_forward(0)
            engine.fast_forward(n_before)
        with warnings.catch_warnings():  # batches need not be powers of two
            warnings.simplefilter("ignore", UserWarning)
            return engine.random(n)
