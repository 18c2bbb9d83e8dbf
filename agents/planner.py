"""The synthesis planner: turns a candidate into a recipe through a route from planners."""

from __future__ import annotations

from typing import Any

from athanor import registry
from athanor.agents.common import Agent
from athanor.messages import SynthesisRecipe, SynthesisRequest, to_wire


class PlannerAgent(Agent):
    role = "planner"

    def __init__(self, spec: dict[str, Any], campaign_id: str):
        super().__init__(spec, campaign_id)
        self.route = registry.make_route(self.spec)

    def plan(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            message = self.receive(request, SynthesisRequest)
            recipe = self.route.plan(message.inputs, message.pool_index, message.history)
            return to_wire(SynthesisRecipe(
                campaign_id=self.campaign_id, sample_id=message.sample_id, causation_id=message.id,
                sender=self.role, inputs=message.inputs, pool_index=message.pool_index, **recipe,
            ))
        except Exception as exc:  # noqa: BLE001
            return self.fault(request, "plan", exc)
