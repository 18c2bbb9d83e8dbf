"""The arc-melting route: an alloy composition becomes the elements' masses for one button and the
arc current its most refractory element needs (Athanor's `athanor.routes` entry point)."""

from __future__ import annotations

from typing import Any, Sequence

from pymatgen.core import Composition, Element


class ArcMeltRoute:
    name = "arc_melt"
    learns = False  # it never reads the history of earlier samples

    def __init__(self, button_g: float = 5.0, melts: int = 4, amps_per_kelvin: float = 0.18):
        if not button_g > 0:
            raise ValueError(f"button_g must be positive, got {button_g}")
        self.button_g, self.melts, self.amps_per_kelvin = button_g, melts, amps_per_kelvin

    def plan(self, inputs: dict[str, Any], pool_index: int | None,
             history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        amounts = {el: float(x) for el, x in inputs.items() if Element.is_valid_symbol(el) and float(x) > 0}
        if not amounts:
            raise ValueError(f"no element amounts among the inputs {sorted(inputs)}")
        composition = Composition(amounts)
        weights = {str(el): composition.get_wt_fraction(el) for el in composition}
        hottest = max(composition, key=lambda el: el.melting_point)
        current = self.amps_per_kelvin * float(hottest.melting_point)
        return {
            "route": self.name,
            "target": composition.reduced_formula,
            "precursors": [{"formula": el, "mass_g": round(self.button_g * w, 4)} for el, w in weights.items()],
            "steps": [{"action": "arc_melt", "current_a": round(current, 1), "melts": self.melts,
                       "atmosphere": "Ar"}],
            "details": {"most_refractory": str(hottest), "melting_point_k": float(hottest.melting_point)},
        }
