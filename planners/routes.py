"""Synthesis routes: how a designed candidate becomes a recipe for the synthesis station.

For a pool world the "route" retrieves the tabulated sample; process parameters pass through as the
recipe. Chemistry-aware routes (precursors, balanced reactions, heating profiles) plug in here.
"""

from __future__ import annotations

from typing import Any, Sequence


class DirectRoute:
    """The candidate's inputs are the process parameters: nothing to derive."""

    name = "direct"
    learns = False  # it never reads `history`, so the planner need not gather it

    def plan(self, inputs: dict[str, Any], pool_index: int | None,
             history: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        action = {"action": "retrieve", "pool_index": pool_index} if pool_index is not None else {
            "action": "process", "parameters": inputs}
        return {"route": "pool-retrieval" if pool_index is not None else self.name, "steps": [action],
                "precursors": []}
