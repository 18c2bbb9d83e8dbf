"""What a world is: the ground truth an experiment would give, like an ASE calculator for a campaign.

A world answers `synthesize(recipe, key)` and `measure(product, probe, key)`. `key` names the step
(sample and step), and every random draw — noise, faults — is seeded from (seed, key), so a
simulated campaign is reproducible whatever order its steps run in, and a step re-run after a crash
gives the same answer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np


class InstrumentFault(RuntimeError):
    """A simulated instrument failure: the step fails, the sample is kept as failed."""


@runtime_checkable
class World(Protocol):
    name: str
    outputs: list[str]

    def synthesize(self, recipe: dict[str, Any], key: str) -> dict[str, Any]: ...

    def measure(self, product: dict[str, Any], probe: str, key: str) -> dict[str, float]: ...


class SimulatedConditions:
    """Noise, instrument time and faults, as the campaign file sets them; shared by every world."""

    def __init__(self, seed: int = 0, noise: float = 0.0, latency_s: float = 0.0, failure_rate: float = 0.0):
        self.seed = seed
        self.noise = noise
        self.latency_s = latency_s
        self.failure_rate = failure_rate

    def rng(self, key: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def run_step(self, key: str) -> np.random.Generator:
        """Spend the instrument's time, maybe fail, and hand back the step's own random stream."""
        rng = self.rng(key)
        if self.latency_s:
            time.sleep(self.latency_s)
        if rng.random() < self.failure_rate:
            raise InstrumentFault(f"simulated instrument fault during {key}")
        return rng

    def noisy(self, values: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
        if not self.noise:
            return dict(values)
        return {k: float(v * (1.0 + self.noise * rng.standard_normal())) for k, v in values.items()}
