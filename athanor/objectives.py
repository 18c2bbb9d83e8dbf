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


def expected_best_of_random(values: Sequence[float], objective: Objective, counts: Sequence[int]) -> list[float]:
    """What random sampling of distinct rows would have found: the expected best of the first k
    measurements, for each k in `counts`, from a pool whose outcomes are `values`. Exact: the i-th worst
    of N rows is the best of a random k of them with probability C(i-1, k-1) / C(N, k)."""
    import numpy as np
    from scipy.special import gammaln

    v = np.asarray(values, dtype=float)
    order = np.argsort([utility(x, objective) for x in v])
    v, n = v[order], len(v)
    i = np.arange(1, n + 1)

    def log_comb(a: Any, b: Any) -> Any:
        return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

    expected = []
    for k in counts:
        k = min(max(int(k), 1), n)
        ok = i >= k
        p = np.zeros(n)
        p[ok] = np.exp(log_comb(i[ok] - 1, k - 1) - log_comb(n, k))
        expected.append(float(p @ v))
    return expected
