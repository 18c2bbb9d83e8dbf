"""The designer: asks its strategy for candidates, given what has been measured and what is in flight."""

from __future__ import annotations

from typing import Any

from athanor import registry
from athanor.agents.common import Agent
from athanor.messages import DesignProposal, DesignRequest, to_wire
from athanor.planners.base import Observation
from athanor.planners.space import DesignSpace
from athanor.simulators.replay import load_pool


class DesignerAgent(Agent):
    role = "designer"

    def __init__(self, spec: dict[str, Any], campaign_id: str):
        super().__init__(spec, campaign_id)
        pool_spec = self.spec.space.pool
        pool = None
        if pool_spec is not None:
            pool = load_pool(pool_spec.dataset, pool_spec.inputs, []).to_numpy(dtype=float)
        strategy_cls = registry.load("athanor.strategies", self.spec.designer.strategy)
        self.strategy = strategy_cls(DesignSpace(self.spec.space, pool), objectives=self.spec.objectives,
                                     constraints=self.spec.outcome_constraints, seed=self.spec.seed,
                                     **self.spec.designer.options)

    def propose(self, request: dict[str, Any], history: list[dict[str, Any]],
                pending: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            message = self.receive(request, DesignRequest)
            candidates = self.strategy.propose([Observation(**h) for h in history], message.n,
                                               [Observation(**p) for p in pending])
            return to_wire(DesignProposal(
                campaign_id=self.campaign_id, causation_id=message.id, sender=self.role,
                batch=message.batch, strategy=self.strategy.name,
                model_version=getattr(self.strategy, "model_version", None), candidates=candidates,
            ))
        except Exception as exc:  # noqa: BLE001 -- answered as a Fault, the campaign decides
            return self.fault(request, "design", exc)
