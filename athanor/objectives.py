"""What "better" means for a campaign's objectives and outcome constraints."""

from __future__ import annotations

import math
from typing import Any, Sequence

from athanor.spec import Objective, OutcomeConstraint


def utility(value: float, objective: Objective) -> float:
    """Higher is better, whatever the direction."""
    if objective.direction == "maximize":
        return value
    if objective.direction == "minimize":
        return -value
    return -abs(value - objective.target)


def meets_target(values: dict[str, float], objective: Objective) -> bool:
    value = values.get(objective.name)
    return (objective.direction == "target" and value is not None
            and abs(value - objective.target) <= objective.tolerance)


def feasible(values: dict[str, float], constraints: Sequence[OutcomeConstraint]) -> bool:
    for c in constraints:
        v = values.get(c.name)
        if v is None or not math.isfinite(v):
            return False
        if (c.lower is not None and v < c.lower) or (c.upper is not None and v > c.upper):
            return False
    return True


def best_sample(samples: Sequence[dict[str, Any]], objectives: Sequence[Objective],
                constraints: Sequence[OutcomeConstraint] = ()) -> dict[str, Any] | None:
    """The measured, feasible sample that is best on the first objective (ties: the earlier)."""
    measured = [s for s in samples if s.get("values") and feasible(s["values"], constraints)]
    if not measured:
        return None
    first = objectives[0]
    return max(measured, key=lambda s: (utility(s["values"][first.name], first), -s.get("seq", 0)))
