"""Solid-state synthesis routes: the recipe for a candidate, and learning from failure.

The ranked routes come from reactions.py (precursor sets, balanced reactions, heating, score); this
module picks one in the light of past outcomes, computes masses for `batch_g` grams of target (in the
designed cation ratio when the inputs give one) and writes the recipe.

Learning from failure (after A-Lab): `record(recipe, target_fraction)` files the outcome in a
RouteMemory (a JSON-able list; `RouteMemory.from_history` rebuilds it). Planning picks the best
(route, dwell) option, dwell ∈ {rule, +100, +200 °C} under the route's cap, by score − 0.1 per 100 °C
raised − penalties from failures (target_fraction < threshold) of the same target and precursor set:
100 (never again) in the same 50 °C band; for an incomplete reaction (precursor_fraction ≥
impurity_fraction, both given) 100 at or below the failed temperature and none above (raise the
temperature); otherwise (impurities, or cause unknown) 1 at every temperature (next route).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from athanor.errors import AthanorError
from athanor.planners.precursors import (Library, composition_key, elements, load_library, molar_mass, reduced_key,
                                         target_elements)
from athanor.planners.precursors import number as _number
from athanor.planners.reactions import (ATMOSPHERES, DWELL_H, HAZARD_WEIGHTS, PRE_GAP_C, PRE_H, RAMP_C_PER_MIN, Balanced,
                                        RouteOption, balance, masses, rank_routes)

__all__ = ["HAZARD_WEIGHTS", "RouteMemory", "SolidStateRoute", "balance", "plan_report", "rank_routes"]

THRESHOLD, BAND_C, RAISE_C, RAISES, RAISE_PENALTY, SET_PENALTY, NEVER = 0.5, 50.0, 100.0, 2, 0.1, 1.0, 100.0


class RouteMemory:
    """Outcomes of past syntheses: a plain list of {target, precursors, temperature_c, target_fraction, ...}."""

    def __init__(self, outcomes: list[dict[str, Any]] | None = None, threshold: float = THRESHOLD):
        self.threshold = _number(threshold, "route memory threshold")
        self.outcomes: list[dict[str, Any]] = []
        for i, item in enumerate(outcomes or []):
            if not isinstance(item, dict):
                raise AthanorError(f"route memory: item {i + 1}: expected a mapping, got {item!r}")
            try:
                self.add(**item)
            except (TypeError, AthanorError) as exc:
                raise AthanorError(f"route memory: item {i + 1}: {exc}") from None

    @classmethod
    def from_history(cls, items: list[dict[str, Any]], threshold: float = THRESHOLD) -> RouteMemory:
        return cls(items, threshold)

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(o) for o in self.outcomes]

    def add(self, target: str, precursors: list[str], temperature_c: float, target_fraction: float,
            precursor_fraction: float | None = None, impurity_fraction: float | None = None) -> dict[str, Any]:
        target_elements(target)
        if not isinstance(precursors, (list, tuple)) or not precursors or any(not isinstance(p, str)
                                                                               for p in precursors):
            raise AthanorError(f"precursors must be a list of formulas, got {precursors!r}")
        item = {"target": target, "precursors": sorted(precursors),
                "temperature_c": _number(temperature_c, "temperature_c"),
                "target_fraction": _number(target_fraction, "target_fraction")}
        for k, v in (("precursor_fraction", precursor_fraction), ("impurity_fraction", impurity_fraction)):
            if v is not None:
                item[k] = _number(v, k)
        self.outcomes.append(item)
        return item

    def failures(self, target: str, precursors: Iterable[str]) -> list[dict[str, Any]]:
        key = sorted(composition_key(p) for p in precursors)
        return [o for o in self.outcomes if o["target_fraction"] < self.threshold
                and reduced_key(o["target"]) == reduced_key(target)
                and sorted(composition_key(p) for p in o["precursors"]) == key]

    def penalty(self, target: str, precursors: Iterable[str], temperature_c: float) -> tuple[float, list[str]]:
        pen, why = 0.0, []
        for f in self.failures(target, precursors):
            t, ok = f["temperature_c"], f"{f['target_fraction']:.2f} at {f['temperature_c']:g} °C"
            incomplete = f.get("precursor_fraction", -1.0) >= f.get("impurity_fraction", math.inf)
            if math.floor(t / BAND_C) == math.floor(temperature_c / BAND_C) or (incomplete and temperature_c <= t):
                pen += NEVER
                why.append(f"failed ({ok}): not repeated")
            elif incomplete:
                why.append(f"incomplete reaction ({ok}): hotter")
            else:
                pen += SET_PENALTY
                why.append(f"failed ({ok}): next route preferred")
        return pen, why


class SolidStateRoute:
    """Chemistry-aware route: the ranked, memory-aware solid-state recipe for a target (see the module docstring)."""

    name = "solid_state"

    def __init__(self, target: str | None = None, batch_g: float = 5.0, library: Library | str | None = None,
                 precursors: Iterable[str] | None = None, memory: RouteMemory | None = None,
                 threshold: float = THRESHOLD):
        self.library = library if isinstance(library, Library) else load_library(library)
        self.batch_g = _number(batch_g, "batch mass (g)", positive=True)
        self.target = target
        if target is not None:
            target_elements(target)
        self.allowed = None
        if precursors:
            missing = [p for p in precursors if self.library.find(p) is None]
            if missing:
                raise AthanorError(f"precursor {missing[0]!r} is not in the library {self.library.path}")
            self.allowed = [self.library.find(p) for p in precursors]
        self.memory = memory if memory is not None else RouteMemory(threshold=threshold)
        self._ranked: dict[tuple[str, float | None], list[RouteOption]] = {}

    def ranked(self, target: str, temperature_c: float | None = None) -> list[RouteOption]:
        key = (target, temperature_c)
        if key not in self._ranked:
            self._ranked[key] = rank_routes(target, self.library, self.batch_g, temperature_c, self.allowed)
        return self._ranked[key]

    def plan(self, inputs: dict[str, Any] | None, pool_index: int | None = None,
             history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The best recipe now. `history` holds earlier samples as the conductor logged them
        ({recipe, values, state}); their outcomes join the route memory for this call only, so the
        plan depends on the store alone and a resumed campaign plans the same way."""
        from pymatgen.core import Element

        memory = RouteMemory.from_history(self.memory.to_list(), self.memory.threshold)
        for item in history:
            values = item.get("values") or {}
            if item.get("recipe") and "target_fraction" in values:
                self._file(memory, item["recipe"], values["target_fraction"],
                           values.get("precursor_fraction"), values.get("impurity_fraction"))
        inputs = dict(inputs or {})
        target = self.target or inputs.get("target") or inputs.get("formula")
        if not target:
            raise AthanorError("solid_state route: no target: set the route's target or give `target` in the inputs")
        t_set = _number(inputs["temperature_c"], "temperature_c") if "temperature_c" in inputs else None
        options = []
        for rank, opt in enumerate(self.ranked(target, t_set)):
            rule, cap = opt.heating["dwell_c"], opt.heating["cap_c"]
            temps = [t_set] if t_set is not None else [rule + k * RAISE_C for k in range(RAISES + 1)
                                                       if k == 0 or rule + k * RAISE_C <= cap]
            for t in temps:
                pen, why = memory.penalty(target, opt.balanced.precursors, t)
                raised = RAISE_PENALTY * (t - rule) / RAISE_C if t_set is None else 0.0
                options.append((opt.score - raised - pen, -rank, -t, rank, opt, t, pen, why))
        total, _, _, rank, opt, t, pen, why = max(options, key=lambda o: o[:3])
        fractions = {k: _number(v, k) for k, v in inputs.items() if isinstance(k, str) and Element.is_valid_symbol(k)}
        recipe = _recipe(opt, self.library, self.batch_g, rank, t, inputs, fractions)
        recipe["score"] = round(total, 6)
        recipe["details"]["memory"] = {"base_score": round(opt.score, 6), "penalty": pen, "reasons": why,
                                       "temperature_raised_c": t - opt.heating["dwell_c"]}
        if pen >= NEVER:
            recipe["details"]["notes"].append("every option has failed before; this one least often")
        return recipe

    def record(self, recipe: dict[str, Any], target_fraction: float, precursor_fraction: float | None = None,
               impurity_fraction: float | None = None) -> dict[str, Any]:
        """File a synthesis outcome (a recipe from `plan`, or its SynthesisRecipe) in the route memory."""
        return self._file(self.memory, recipe, target_fraction, precursor_fraction, impurity_fraction)

    def _file(self, memory: RouteMemory, recipe: dict[str, Any], target_fraction: float,
              precursor_fraction: float | None, impurity_fraction: float | None) -> dict[str, Any]:
        target = recipe.get("target") or self.target
        if not target:
            raise AthanorError("record: the recipe names no target and the route has none")
        names = [p.get("formula") if isinstance(p, dict) else p for p in recipe.get("precursors") or []]
        names = [self.library.find(p) or p if isinstance(p, str) else p for p in names]
        temps = [s["temperature_c"] for s in recipe.get("steps") or [] if isinstance(s, dict) and "temperature_c" in s]
        if not temps and "temperature_c" in (recipe.get("inputs") or {}):
            temps = [recipe["inputs"]["temperature_c"]]
        if not temps:
            raise AthanorError("record: the recipe has no heating temperature")
        return memory.add(target, names, max(_number(t, "temperature_c") for t in temps), target_fraction,
                          precursor_fraction, impurity_fraction)


def _recipe(opt: RouteOption, library: Library, batch_g: float, rank: int, dwell: float, inputs: dict[str, Any],
            fractions: dict[str, float]) -> dict[str, Any]:
    b, heat = opt.balanced, opt.heating
    amounts, notes = masses(b, batch_g), list(heat["notes"])
    if fractions:
        amounts = _ratio_amounts(b, batch_g, fractions)
        notes.append("amounts matched to the designed cation ratio "
                     + ", ".join(f"{e} {v:g}" for e, v in fractions.items()))
    atmosphere = inputs.get("atmosphere", heat["atmosphere"])
    if atmosphere not in ATMOSPHERES:
        raise AthanorError(f"atmosphere must be one of {', '.join(ATMOSPHERES)}, got {atmosphere!r}")
    ramp = _number(inputs.get("ramp_c_per_min", RAMP_C_PER_MIN), "ramp_c_per_min", positive=True)
    hold = _number(inputs.get("time_h", DWELL_H), "time_h")
    if hold < 0:
        raise AthanorError(f"time_h cannot be negative, got {hold:g}")
    heat_step = {"action": "heat", "ramp_c_per_min": ramp, "atmosphere": atmosphere}
    steps = [{"action": "dose", "formula": x["formula"], "mass_g": x["mass_g"]} for x in amounts]
    pre = heat["calcination_c"]
    if pre is not None and pre <= dwell - PRE_GAP_C:
        steps.append({**heat_step, "temperature_c": pre, "time_h": PRE_H, "purpose": "calcination (gas release)"})
    steps.append({**heat_step, "temperature_c": dwell, "time_h": hold, "purpose": "reaction dwell"})
    return {
        "route": "solid_state", "target": b.target, "reaction": b.equation(),
        "precursors": amounts, "steps": steps, "score": round(opt.score, 6), "cost_usd": round(opt.cost_usd, 4),
        "hazards": {p: list(library.precursors[p].hazards) for p in b.precursors},
        "details": {"rank": rank + 1, "score_breakdown": opt.breakdown, "driving_force": opt.energy,
                    "byproducts": {g: v for g, v in b.gases.items() if v > 0},
                    "o2_taken_up": -b.gases["O2"] if b.gases.get("O2", 0) < 0 else 0.0,
                    "tamman_c": heat["onset_c"], "heating": {k: v for k, v in heat.items() if k != "notes"},
                    "batch_g": batch_g, "notes": notes}}


def _ratio_amounts(b: Balanced, batch_g: float, fractions: dict[str, float]) -> list[dict[str, Any]]:
    """Precursor amounts whose cations stand in the designed ratio (same total cation mol as the batch)."""
    import numpy as np

    want = elements(b.target)
    cations = [e for e in want if e != "O"]
    extra, missing = sorted(set(fractions) - set(cations)), sorted(set(cations) - set(fractions))
    if extra or missing:
        raise AthanorError(f"inputs give the cations {', '.join(sorted(fractions))}, "
                           f"but {b.target} has {', '.join(cations)}")
    total = sum(fractions.values())
    if total <= 0 or min(fractions.values()) < 0:
        raise AthanorError(f"cation fractions must be non-negative with a positive sum, got {fractions}")
    n = batch_g / molar_mass(b.target) * sum(want[e] for e in cations)
    a = np.array([[elements(p).get(e, 0.0) for p in b.precursors] for e in cations])
    x, *_ = np.linalg.lstsq(a, np.array([fractions[e] / total * n for e in cations]), rcond=None)
    if np.abs(a @ x - [fractions[e] / total * n for e in cations]).max() > 1e-9 * n or (x < 0).any():
        raise AthanorError(f"the precursors {', '.join(b.precursors)} cannot give the cation ratio {fractions}")
    return [{"formula": p, "mol": float(v), "mass_g": float(v) * molar_mass(p)} for p, v in zip(b.precursors, x)]


def plan_report(formula: str, batch_g: float = 5.0, top: int = 5,
                library: Library | str | None = None) -> list[dict[str, Any]]:
    """The `top` best recipes for a target at their rule temperatures, JSON-serializable (`athanor plan`)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise AthanorError(f"top must be a positive integer, got {top!r}")
    lib = library if isinstance(library, Library) else load_library(library)
    options = rank_routes(formula, lib, batch_g)
    return [_recipe(o, lib, float(batch_g), i, o.heating["dwell_c"], {}, {}) for i, o in enumerate(options[:top])]
