"""Dataset replay: a tabulated experimental dataset becomes a pool-based simulated lab.

Every distinct input row is one possible experiment; rows repeated in the file are averaged first
(the protocol of Liang et al., npj Comput Mater 7, 188, 2021). "Synthesis" retrieves the pool row;
measuring it returns the tabulated objectives, with the campaign's noise on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from athanor.errors import AthanorError
from athanor.pool import load_pool
from athanor.simulators.base import SimulatedConditions

__all__ = ["ReplayWorld", "load_pool"]


class ReplayWorld:
    name = "replay"

    def __init__(self, dataset: str | Path, inputs: list[str], outputs: list[str],
                 conditions: SimulatedConditions | None = None):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.pool = load_pool(dataset, self.inputs, self.outputs)
        self.conditions = conditions or SimulatedConditions()

    @classmethod
    def from_campaign(cls, spec: Any) -> ReplayWorld:
        if spec.space.pool is None:
            raise AthanorError("world 'replay' needs a pool space (space.pool: dataset and inputs)")
        outputs = spec.output_names
        return cls(spec.space.pool.dataset, spec.space.pool.inputs, outputs, SimulatedConditions.from_spec(spec))

    def synthesize(self, recipe: dict[str, Any], key: str) -> dict[str, Any]:
        index = recipe.get("pool_index")
        if index is None or not 0 <= index < len(self.pool):
            raise AthanorError(f"recipe names no row of the pool (pool_index={index!r})")
        row = self.pool.iloc[index][self.inputs].to_numpy(dtype=float)
        asked = np.array([float(recipe["inputs"][name]) for name in self.inputs])
        if not np.allclose(row, asked, rtol=1e-9, atol=1e-12):
            raise AthanorError(f"recipe inputs do not match pool row {index}")
        self.conditions.run_step(key)
        return {"pool_index": int(index)}

    def measure(self, product: dict[str, Any], probe: str, key: str) -> dict[str, float]:
        rng = self.conditions.run_step(key)
        row = self.pool.iloc[int(product["pool_index"])]
        return self.conditions.noisy({name: float(row[name]) for name in self.outputs}, rng, key)
