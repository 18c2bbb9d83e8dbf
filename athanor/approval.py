"""The `rules` approval policy: when a proposal may go to the lab without asking an operator.

The rules look at what the designer saw (the samples it was given, by the lag rule), the candidate's
prediction and, for routes that price and flag their recipes, the recipe planned before approval.
(Operators' own decisions go through `athanor.commands`.)"""

from __future__ import annotations

import math
from typing import Any, Sequence


def rule_failures(candidate: dict[str, Any], measured: Sequence[dict[str, Any]], rules: Any,
                  objective: str, recipe: dict[str, Any] | None = None) -> list[str]:
    """Why the `rules` policy would not approve this candidate by itself (empty: it would).

    `measured` are the samples the designer saw (the lag rule), so the decision does not depend on
    the order in which steps finished and a seed replays it."""
    inputs = candidate.get("inputs") or {}
    done = [s for s in measured if s.get("values")]
    if len(done) < rules.min_measured:
        return [f"only {len(done)} of the {rules.min_measured} measurements the rules ask for first"]
    problems = []
    if rules.inside_explored:
        for name, value in inputs.items():
            seen = [s["inputs"].get(name) for s in done if name in s["inputs"]]
            if isinstance(value, str):
                if value not in seen:
                    problems.append(f"{name} = {value!r} was never measured")
                continue
            low, high = min(seen, default=math.inf), max(seen, default=-math.inf)
            slack = rules.margin * (high - low)
            if not low - slack <= value <= high + slack:
                problems.append(f"{name} = {value:.4g} is outside the measured {low:.4g} to {high:.4g}")
    if rules.max_relative_sd is not None:
        prediction = (candidate.get("predicted") or {}).get(objective)
        if not prediction:
            problems.append(f"no model prediction of {objective}")
        else:
            ratio = prediction["sd"] / max(abs(prediction["mean"]), 1e-12)
            if ratio > rules.max_relative_sd:
                problems.append(f"{objective} too uncertain (sd/|mean| {ratio:.2f} > {rules.max_relative_sd:g})")
    return problems + recipe_failures(recipe, rules)


def recipe_failures(recipe: dict[str, Any] | None, rules: Any) -> list[str]:
    """The rules on what making the candidate involves: the precursors' cost and hazard flags."""
    if rules.max_cost_usd is None and rules.allowed_hazards is None:
        return []
    if not recipe:
        return ["no recipe to judge cost and hazards by"]
    problems = []
    cost = recipe.get("cost_usd")
    if rules.max_cost_usd is not None:
        if cost is None:
            problems.append(f"the {recipe.get('route')} recipe has no cost estimate")
        elif cost > rules.max_cost_usd:
            problems.append(f"precursors cost ${cost:.2f}, over the ${rules.max_cost_usd:g} the rules allow")
    if rules.allowed_hazards is not None:
        flagged = {p: sorted(set(flags) - set(rules.allowed_hazards))
                   for p, flags in (recipe.get("hazards") or {}).items()}
        flagged = {p: f for p, f in flagged.items() if f}
        if flagged:
            problems.append("hazardous precursors: " + "; ".join(f"{p} ({', '.join(f)})" for p, f in flagged.items()))
    return problems
