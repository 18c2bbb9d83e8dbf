"""Alloy world: the mean magnetic moment of Cr–Mn–Fe–Co–Ni–Cu alloys, from the Stoner model.

The composition is continuous (element symbols as campaign inputs, or a formula at the command
line) and the truth is differentiable in it: `moment_and_gradient` gives d(moment)/d(fraction)
by implicit differentiation through the self-consistent solution (see `stoner.py`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from athanor.errors import AthanorError
from athanor.simulators.base import ComputedWorld, SimulatedConditions
from athanor.simulators.stoner import ELEMENTS, STRUCTURES, StonerModel


@functools.lru_cache(maxsize=1)
def shared_model() -> StonerModel:
    """One model per process: the canonical bands are computed once."""
    return StonerModel()


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

    def __init__(self, structure: str | None = None, outputs: list[str] | None = None,
                 conditions: SimulatedConditions | None = None):
        super().__init__(outputs, conditions)
        if structure is not None and structure not in STRUCTURES:
            raise AthanorError(f"world.options.structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
        self.structure = structure

    def _structure(self, settings: dict[str, Any]) -> str | None:
        structure = settings.get("structure", self.structure)
        if structure is not None and structure not in STRUCTURES:
            raise AthanorError(f"structure must be one of {', '.join(STRUCTURES)}, not {structure!r}")
        return structure

    def evaluate(self, composition: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
        c = composition_vector(composition)
        with torch.no_grad():
            state = shared_model().state(c, self._structure(settings))
        electrons = float(state["electrons"])
        result = {
            "magnetic_moment": float(state["moment"]),  # μB per atom
            "structure": state["structure"],
            "valence_electrons": electrons,
            "average_atomic_number": electrons + 18.0,  # 3d metals: Z = 18 (argon core) + valence
            "exchange_splitting": float(state["exchange_splitting"]),  # eV
            "fermi_level": float(state["fermi_level"]),  # eV above the d-band centre
        }
        if "energy_difference" in state:
            result["bcc_minus_fcc_energy"] = float(state["energy_difference"])  # eV per atom
        return result

    def moment_and_gradient(self, composition: dict[str, float], structure: str | None = None
                            ) -> tuple[float, dict[str, float]]:
        """The moment and its gradient with respect to each element's fraction (others held)."""
        c = composition_vector(composition).requires_grad_(True)
        moment = shared_model().state(c, self._structure({"structure": structure} if structure else {}))["moment"]
        (gradient,) = torch.autograd.grad(moment, c)
        return float(moment.detach()), {e: float(g) for e, g in zip(ELEMENTS, gradient)}

    def differentiable_model(self, elements: list[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        """The truth as a torch function of a batch of fractions over `elements` (in that order),
        for designers that descend its gradient: X [batch, len(elements)] -> {"magnetic_moment": [batch]}."""
        unknown = sorted(set(elements) - set(ELEMENTS))
        if unknown:
            raise AthanorError(f"the alloy world knows {', '.join(ELEMENTS)}; not {', '.join(unknown)}")
        embed = torch.zeros(len(elements), len(ELEMENTS), dtype=torch.double)
        for i, element in enumerate(elements):
            embed[i, ELEMENTS.index(element)] = 1.0
        model, structure = shared_model(), self.structure

        def moment(X: torch.Tensor) -> dict[str, torch.Tensor]:
            c = torch.as_tensor(X, dtype=torch.double) @ embed
            return {"magnetic_moment": torch.stack([model.state(row, structure)["moment"] for row in c.reshape(-1, len(ELEMENTS))])
                    .reshape(c.shape[:-1])}

        return moment
