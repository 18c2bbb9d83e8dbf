"""What a world is: the ground truth an experiment would give, like an ASE calculator for a campaign.

A world answers `synthesize(recipe, key)` and `measure(product, probe, key)`. `key` names the step
(sample and step), and every random draw — noise, faults — is seeded from (seed, key), so a
simulated campaign is reproducible whatever order its steps run in, and a step re-run after a crash
gives the same answer.

Physics worlds subclass `ComputedWorld`: they only say what a composition (plus settings such as a
temperature) *is* — `evaluate(composition, settings)`, noiseless — and the base class turns that
into instrument steps with the campaign's noise, instrument time, faults and drift.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import time
from typing import Any, Protocol, runtime_checkable

import numpy as np

from athanor.chemistry import is_element
from athanor.errors import AthanorError


class InstrumentFault(RuntimeError):
    """A simulated instrument failure: the step fails, the sample is kept as failed."""


@runtime_checkable
class World(Protocol):
    name: str
    outputs: list[str]

    def synthesize(self, recipe: dict[str, Any], key: str) -> dict[str, Any]: ...

    def measure(self, product: dict[str, Any], probe: str, key: str) -> dict[str, float]: ...


class SimulatedConditions:
    """Noise, instrument time, faults and drift, as the campaign file sets them; shared by every world.

    noise: relative sd of a multiplicative error on every reading.
    latency_s: fixed instrument time per step; time_scale: seconds slept per second of the world's
    own modelled step time (a 4 h anneal at time_scale 1e-4 takes 1.44 s).
    failure_rate: probability that a step fails.
    drift: relative calibration drift per sample; sample S0010 reads (1 + 10·drift) × truth.
    """

    def __init__(self, seed: int = 0, noise: float = 0.0, latency_s: float = 0.0, failure_rate: float = 0.0,
                 drift: float = 0.0, time_scale: float = 0.0):
        self.seed = seed
        self.noise = noise
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.drift = drift
        self.time_scale = time_scale

    @classmethod
    def from_spec(cls, spec: Any) -> SimulatedConditions:
        w = spec.world
        return cls(spec.seed, w.noise, w.latency_s, w.failure_rate, w.drift, w.time_scale)

    def rng(self, key: str) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def run_step(self, key: str, modelled_s: float = 0.0) -> np.random.Generator:
        """Spend the instrument's time, maybe fail, and hand back the step's own random stream."""
        rng = self.rng(key)
        wait = self.latency_s + self.time_scale * modelled_s
        if wait > 0:
            time.sleep(wait)
        if rng.random() < self.failure_rate:
            raise InstrumentFault(f"simulated instrument fault during {key}")
        return rng

    def noisy(self, values: dict[str, float], rng: np.random.Generator, key: str = "") -> dict[str, float]:
        gain = 1.0 + self.drift * sample_ordinal(key)
        if not self.noise:
            return {k: float(v * gain) for k, v in values.items()}
        return {k: float(v * gain * (1.0 + self.noise * rng.standard_normal())) for k, v in values.items()}


def sample_ordinal(key: str) -> int:
    """The sample's number in a step key such as 'S0012:characterization' (0 when there is none)."""
    match = re.match(r"\D*(\d+)", key)
    return int(match.group(1)) if match else 0


class ComputedWorld:
    """A world whose truth is a function of the sample: `evaluate(composition, settings)`.

    Subclasses set `name`, `properties` (the numeric outputs a probe can read) and implement
    `evaluate`; constructor keyword arguments are the world's options (`world.options` in the
    campaign file). A campaign's inputs named by element symbols form the composition; every other
    input is a setting.
    """

    name = ""
    properties: tuple[str, ...] = ()
    settings: tuple[str, ...] | None = None  # what `evaluate` reads besides the composition; None: not declared

    def __init__(self, outputs: list[str] | None = None, conditions: SimulatedConditions | None = None):
        self.outputs = list(outputs) if outputs else list(self.properties)
        unknown = [o for o in self.outputs if o not in self.properties]
        if unknown:
            raise AthanorError(f"world {self.name!r} cannot measure {', '.join(map(repr, unknown))}; "
                               f"it measures: {', '.join(self.properties)}")
        self.conditions = conditions or SimulatedConditions()

    @classmethod
    def from_campaign(cls, spec: Any) -> ComputedWorld:
        if spec.space.pool is not None:
            raise AthanorError(f"world {cls.name!r} computes its samples; give parameters or a composition, not a pool")
        return cls.from_options(spec.world.options, outputs=spec.output_names,
                                conditions=SimulatedConditions.from_spec(spec))

    @classmethod
    def from_options(cls, options: dict[str, Any], **kwargs: Any) -> ComputedWorld:
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "outputs", "conditions")]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise AthanorError(f"world.options: unknown option(s) {', '.join(map(repr, unknown))} for world "
                               f"{cls.name!r}; known: {', '.join(accepted) or 'none'}")
        return cls(**options, **kwargs)

    # --- what a subclass provides -----------------------------------------------------------------
    def evaluate(self, composition: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
        """The noiseless truth for a composition (element -> amount, any normalization)."""
        raise NotImplementedError

    def step_time_s(self, composition: dict[str, float], settings: dict[str, Any]) -> float:
        """Modelled instrument time of a synthesis (scaled by `time_scale`); none by default."""
        return 0.0

    # --- the World contract ---------------------------------------------------------------------
    @staticmethod
    def split(inputs: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
        composition = {k: float(v) for k, v in inputs.items() if is_element(k)}
        settings = {k: v for k, v in inputs.items() if not is_element(k)}
        return composition, settings

    def synthesize(self, recipe: dict[str, Any], key: str) -> dict[str, Any]:
        composition, settings = self.split(recipe.get("inputs") or {})
        self.conditions.run_step(key, self.step_time_s(composition, settings))
        return {"composition": composition, "settings": settings}

    def measure(self, product: dict[str, Any], probe: str, key: str) -> dict[str, float]:
        rng = self.conditions.run_step(key)
        truth = self.evaluate(product["composition"], product["settings"])
        return self.conditions.noisy({name: float(truth[name]) for name in self.outputs}, rng, key)
