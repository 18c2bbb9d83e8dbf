"""The synthesis planner: turns a candidate into a recipe through a route from planners."""

from __future__ import annotations

from typing import Any

from athanor import registry
from athanor.agents.common import Agent, History
from athanor.messages import SynthesisRecipe, SynthesisRequest, to_wire


class PlannerAgent(Agent):
    role = "planner"

    def __init__(self, spec: dict[str, Any], campaign_id: str):
        super().__init__(spec, campaign_id)
        self.route = registry.make_route(self.spec)
        self.history = History()

    def plan(self, request: dict[str, Any], feed: dict[str, Any] | None = None) -> dict[str, Any]:
        """A recipe for the request's inputs; `feed` extends what the planner knows of finished samples
        (athanor/feeds.py), of which the route sees those of batches up to `history_through_batch`."""
        try:
            message = self.receive(request, SynthesisRequest)
            if feed is not None and self.history.take(feed) is None:
                return History.RESYNC
            history = message.history
            if message.history_through_batch is not None and getattr(self.route, "learns", True):
                through = message.history_through_batch
                history = sorted((r for r in self.history.records if r["batch"] <= through), key=lambda r: r["seq"])
            recipe = self.route.plan(message.inputs, message.pool_index, history)
            return to_wire(SynthesisRecipe(
                campaign_id=self.campaign_id, sample_id=message.sample_id, causation_id=message.id,
                sender=self.role, inputs=message.inputs, pool_index=message.pool_index, **recipe,
            ))
        except Exception as exc:  # noqa: BLE001
            return self.fault(request, "plan", exc)
