"""Alloy world: the magnetic moments of Cr–Mn–Fe–Co–Ni–Cu alloys.

Two models of the same alloys (`world.options.model`):

* `cpa` (default): the coherent-potential approximation (`cpa.py`). Each species keeps its own level
  and local moment, so Cr and Mn can couple antiparallel and Cu dilutes. The output is the mean
  moment and each element's moment.
* `rigid_band`: the virtual-crystal Stoner model (`stoner.py`), where only the average electron count
  matters. It is kept as the cheap physics prior of the learned predictors, and for comparison.

The composition is continuous (element symbols as campaign inputs, or a formula at the command
line). The truth is differentiable in it: `moment_and_gradient` gives d(moment)/d(fraction) by
implicit differentiation through the self-consistent solution.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
import torch

from athanor.errors import AthanorError
from athanor.simulators.base import ComputedWorld, SimulatedConditions
from athanor.simulators.cpa import CPAModel
from athanor.simulators.stoner import ELEMENTS, STRUCTURES, VALENCE, StonerModel

MODELS = ("cpa", "rigid_band")
VALENCE_CU = VALENCE["Cu"]


@functools.lru_cache(maxsize=1)
def shared_model() -> StonerModel:
    """One rigid-band model per process: the canonical bands are computed once."""
    return StonerModel()


@functools.lru_cache(maxsize=1)
def shared_cpa() -> CPAModel:
    return CPAModel()


def composition_vector(composition: dict[str, float]) -> torch.Tensor:
    """Fractions over `ELEMENTS`, checked: only those elements, non-negative, not all zero."""
    unknown = sorted(set(composition) - set(ELEMENTS))
    if unknown:
        raise AthanorError(f"the alloy world knows {', '.join(ELEMENTS)}; not {', '.join(unknown)}")
    negative = sorted(k for k, v in composition.items() if not v >= 0)  # also catches NaN
    if negative:
        raise AthanorError(f"negative or missing amount of {', '.join(negative)} in the composition")
    total = sum(composition.values())
    if total <= 0:
        raise AthanorError("the composition is empty: every amount is zero")
    return torch.tensor([composition.get(e, 0.0) / total for e in ELEMENTS], dtype=torch.double)


class AlloyWorld(ComputedWorld):
    name = "alloy"
    properties = ("magnetic_moment", "valence_electrons", "average_atomic_number", "exchange_splitting")
    settings = ("structure", "model")

    def __init__(self, structure: str | None = None, model: str = "cpa", outputs: list[str] | None = None,
                 conditions: SimulatedConditions | None = None):
        super().__init__(outputs, conditions)
        if structure is not None and structure not in STRUCTURES:
            raise AthanorError(f"world.options.structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
        if model not in MODELS:
            raise AthanorError(f"world.options.model must be one of {', '.join(MODELS)}, not {model!r}")
        self.structure, self.model = structure, model

    def _choice(self, settings: dict[str, Any]) -> tuple[str | None, str]:
        structure, model = settings.get("structure", self.structure), settings.get("model", self.model)
        if structure is not None and structure not in STRUCTURES:
            raise AthanorError(f"structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
        if model not in MODELS:
            raise AthanorError(f"model must be one of {', '.join(MODELS)}, not {model!r}")
        return structure, model

    def evaluate(self, composition: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
        c = composition_vector(composition)
        structure, model = self._choice(settings)
        electrons = float((c * shared_model().valence).sum())
        result: dict[str, Any] = {"valence_electrons": electrons,
                                  "average_atomic_number": electrons + 18.0}  # 3d metals: Z = 18 (argon core) + valence
        with torch.no_grad():
            if model == "cpa":
                state = shared_cpa().state(c[None], structure)
                moments = {e: float(state["moments"][0, i]) for i, e in enumerate(ELEMENTS) if c[i] > 0}
                splitting = sum(float(c[ELEMENTS.index(e)]) * shared_cpa().p.stoner_i[e] * m for e, m in moments.items())
                result.update(magnetic_moment=float(state["moment"][0]), moments=moments,  # μB per atom
                              structure=state["structure"][0], exchange_splitting=splitting,  # eV
                              fermi_level=float(state["fermi_level"][0]))  # eV, Fe's d level = 0
                if "energy_difference" in state:
                    result["bcc_minus_fcc_energy"] = float(state["energy_difference"][0])  # eV per atom
                if not bool(state["converged"][0]):
                    raise AthanorError(f"the CPA self-consistency did not converge for {composition}")
                return result
            state = shared_model().state(c, structure)
        result.update(magnetic_moment=float(state["moment"]), structure=state["structure"],
                      exchange_splitting=float(state["exchange_splitting"]), fermi_level=float(state["fermi_level"]))
        if "energy_difference" in state:
            result["bcc_minus_fcc_energy"] = float(state["energy_difference"])
        return result

    def moment_and_gradient(self, composition: dict[str, float], structure: str | None = None
                            ) -> tuple[float, dict[str, float]]:
        """The moment and its gradient with respect to each element's fraction (others held)."""
        c = composition_vector(composition).requires_grad_(True)
        model = self.differentiable_model(list(ELEMENTS), structure)
        moment = model(c[None])["magnetic_moment"][0]
        (gradient,) = torch.autograd.grad(moment, c)
        return float(moment.detach()), {e: float(g) for e, g in zip(ELEMENTS, gradient)}

    def differentiable_model(self, elements: list[str], structure: str | None = None
                             ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        """The truth as a torch function of a batch of fractions over `elements` (in that order), for
        designers that descend its gradient and for oracle baselines:
        X [batch, len(elements)] -> {"magnetic_moment": [batch]}."""
        unknown = sorted(set(elements) - set(ELEMENTS))
        if unknown:
            raise AthanorError(f"the alloy world knows {', '.join(ELEMENTS)}; not {', '.join(unknown)}")
        embed = torch.zeros(len(elements), len(ELEMENTS), dtype=torch.double)
        for i, element in enumerate(elements):
            embed[i, ELEMENTS.index(element)] = 1.0
        structure = structure or self.structure

        def moment(X: torch.Tensor) -> dict[str, torch.Tensor]:
            c = torch.as_tensor(X, dtype=torch.double) @ embed
            flat = c.reshape(-1, len(ELEMENTS))
            if self.model == "cpa":
                value = shared_cpa().state(flat, structure)["moment"]
            else:
                value = torch.stack([shared_model().state(row, structure)["moment"] for row in flat])
            return {"magnetic_moment": value.reshape(c.shape[:-1])}

        return moment

    def approximate_model(self, elements: list[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        """What a lab knows before it measures: the rigid-band (virtual-crystal) moment as a function of
        the average electron count alone, tabulated along the Cr–Mn–Fe–Co–Ni–Cu chain. Cheap and
        differentiable, and wrong where the species differ (Cr and Mn antiparallel, Cu diluting):
        a prior for a learned correction, never the truth."""
        counts, moments = slater_pauling_table()
        valence = torch.tensor([shared_model().valence[ELEMENTS.index(e)] for e in elements], dtype=torch.double)

        def moment(X: torch.Tensor) -> dict[str, torch.Tensor]:
            X = torch.as_tensor(X)
            electrons = (X / X.sum(-1, keepdim=True)) @ valence.to(X.dtype)
            return {"magnetic_moment": interpolate(electrons, counts.to(X.dtype), moments.to(X.dtype))}

        moment.version = "rigid-band-table"  # type: ignore[attr-defined]
        return moment


@functools.lru_cache(maxsize=1)
def slater_pauling_table(points_per_element: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(electron counts, rigid-band moments) from Cr (6) to Cu (11), each count made by the two
    neighbouring elements of the chain."""
    counts, moments = [], []
    for left, right in zip(ELEMENTS[:-1], ELEMENTS[1:]):
        for x in np.linspace(0.0, 1.0, points_per_element, endpoint=False):
            c = composition_vector({left: 1 - x, right: x} if x > 0 else {left: 1.0})
            with torch.no_grad():
                state = shared_model().state(c)
            counts.append(float(state["electrons"]))
            moments.append(float(state["moment"]))
    counts.append(VALENCE_CU)
    moments.append(0.0)
    return torch.tensor(counts, dtype=torch.double), torch.tensor(moments, dtype=torch.double)


def interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation (numpy's interp), differentiable in x; constant outside xp."""
    x = x.clamp(float(xp[0]), float(xp[-1]))
    i = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)
