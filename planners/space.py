"""The design space as strategies see it: a map from the unit hypercube to valid inputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from athanor.spec import CategoricalParameter, ContinuousParameter, IntegerParameter, Space


def bounded_simplex(weights: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map points of the probability simplex onto {x : sum x = 1, low <= x <= high}.

    Mass above the lower bounds is shared in proportion to `weights`; an element that would pass its
    upper bound is capped and its excess shared among the rest (water-filling), so bounds hold
    exactly and the sum stays 1 to rounding.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    out = np.empty_like(weights)
    free_mass = 1.0 - low.sum()
    for row, w in enumerate(weights):
        x = low.copy()
        active = np.ones(len(low), dtype=bool)
        remaining = free_mass
        while remaining > 1e-15 and active.any():
            share = w[active] / w[active].sum() if w[active].sum() > 0 else np.full(active.sum(), 1 / active.sum())
            room = high[active] - x[active]
            add = np.minimum(share * remaining, room)
            x[active] += add
            remaining -= add.sum()
            active &= high - x > 1e-15
        x[np.argmax(high - x)] += 1.0 - x.sum()  # absorb rounding where there is room
        out[row] = x
    return out


class DesignSpace:
    """Wraps the campaign's space; for a pool space, also the table of distinct input rows."""

    def __init__(self, space: Space, pool: np.ndarray | None = None):
        self.space = space
        self.pool = pool
        if space.pool is not None and pool is None:
            raise ValueError("a pool space needs the pool's input rows")
        self.names = space.input_names
        if pool is not None:  # per-column min-max scaling, computed once: every feature row uses it
            lo, hi = pool.min(axis=0), pool.max(axis=0)
            self._pool_lo, self._pool_span = lo, np.where(hi > lo, hi - lo, 1.0)
        self._comp = space.composition
        if self._comp is not None:
            bounds = np.array(list(self._comp.elements.values()), dtype=float)
            self._comp_low, self._comp_high = bounds[:, 0], bounds[:, 1]

    @property
    def is_pool(self) -> bool:
        return self.pool is not None

    @property
    def dim(self) -> int:
        if self.is_pool:
            return self.pool.shape[1]
        return len(self.space.parameters) + (len(self._comp.elements) if self._comp else 0)

    def from_unit(self, u: np.ndarray) -> list[dict[str, Any]]:
        """Decode points of [0, 1]^dim into input dicts that satisfy every bound of the space."""
        u = np.clip(np.atleast_2d(u), 0.0, 1.0 - 1e-12)
        rows: list[dict[str, Any]] = [{} for _ in range(len(u))]
        for j, p in enumerate(self.space.parameters):
            for row, value in zip(rows, u[:, j]):
                if isinstance(p, ContinuousParameter):
                    row[p.name] = float(p.low + value * (p.high - p.low))
                elif isinstance(p, IntegerParameter):
                    row[p.name] = int(p.low + np.floor(value * (p.high - p.low + 1)))
                elif isinstance(p, CategoricalParameter):
                    row[p.name] = p.choices[int(np.floor(value * len(p.choices)))]
        if self._comp is not None:
            k = len(self.space.parameters)
            # uniform -> Exp(1), normalized: a flat Dirichlet (the floor keeps the origin defined)
            exponential = -np.log1p(-u[:, k:]) + 1e-300
            weights = exponential / exponential.sum(axis=1, keepdims=True)
            fractions = bounded_simplex(weights, self._comp_low, self._comp_high)
            for row, x in zip(rows, fractions):
                row.update({el: float(v) for el, v in zip(self._comp.elements, x)})
        return rows

    # --- the feature space a surrogate model sees -------------------------------------------
    # Continuous and integer parameters scaled to [0, 1]; a categorical one as its choice index;
    # composition fractions as they are (they already live in [0, 1] and sum to 1).

    @property
    def cat_dims(self) -> list[int]:
        return [j for j, p in enumerate(self.space.parameters) if isinstance(p, CategoricalParameter)]

    @property
    def comp_dims(self) -> list[int]:
        if self._comp is None:
            return []
        k = len(self.space.parameters)
        return list(range(k, k + len(self._comp.elements)))

    @property
    def fraction_dims(self) -> list[int]:
        """Feature dims that are fractions of a whole: a composition's, or a pool whose input columns
        sum to the same total in every row, within the 3 % that rounding in a table leaves (a blend
        in %, or a composition tabulated to two decimals)."""
        if not self.is_pool:
            return self.comp_dims
        totals = self.pool.sum(axis=1)
        scale = np.abs(np.median(totals))
        if self.pool.shape[1] < 2 or scale == 0 or np.ptp(totals) > 0.03 * scale or (self.pool < 0).any():
            return []
        if np.isin(self.pool, (0.0, 1.0)).all():  # one-hot categories also sum to a constant: no fractions
            return []
        return list(range(self.pool.shape[1]))

    @property
    def comp_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._comp_low, self._comp_high

    def to_features(self, inputs: dict[str, Any]) -> np.ndarray:
        if self.is_pool:
            return (np.array([float(inputs[n]) for n in self.names]) - self._pool_lo) / self._pool_span
        x = []
        for p in self.space.parameters:
            if isinstance(p, CategoricalParameter):
                x.append(float(p.choices.index(inputs[p.name])))
            else:
                x.append((float(inputs[p.name]) - p.low) / (p.high - p.low) if p.high > p.low else 0.0)
        if self._comp is not None:
            x += [float(inputs[el]) for el in self._comp.elements]
        return np.array(x, dtype=float)

    def from_features(self, x: np.ndarray) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for value, p in zip(x, self.space.parameters):
            if isinstance(p, CategoricalParameter):
                row[p.name] = p.choices[int(np.clip(round(float(value)), 0, len(p.choices) - 1))]
            elif isinstance(p, IntegerParameter):
                row[p.name] = int(np.clip(round(p.low + float(value) * (p.high - p.low)), p.low, p.high))
            else:
                row[p.name] = float(np.clip(p.low + float(value) * (p.high - p.low), p.low, p.high))
        if self._comp is not None:
            fractions = np.asarray(x[len(self.space.parameters):], dtype=float)
            row.update({el: float(v) for el, v in zip(self._comp.elements, fractions)})
        return row

    def pool_unit(self) -> np.ndarray:
        """The pool's rows scaled to [0, 1] per column (constant columns map to 0)."""
        return (self.pool - self._pool_lo) / self._pool_span

    def pool_inputs(self, index: int) -> dict[str, Any]:
        return {name: float(v) for name, v in zip(self.names, self.pool[index])}
