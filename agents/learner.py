"""The learner: tracks what the data say so far, versions the model, and says when to stop."""

from __future__ import annotations

from typing import Any

from athanor.agents.common import Agent
from athanor.messages import ModelUpdate, to_wire
from athanor.objectives import best_sample, feasible, meets_target


class LearnerAgent(Agent):
    role = "learner"

    def update(self, sample_id: str, causation_id: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        spec = self.spec
        measured = [s for s in samples if s.get("values")]
        best = best_sample(measured, spec.objectives, spec.outcome_constraints)
        metrics: dict[str, float] = {"n_measured": float(len(measured))}
        if best is not None:
            metrics.update({f"best:{o.name}": best["values"][o.name] for o in spec.objectives})
        targets = [o for o in spec.objectives if o.direction == "target"]
        hit = [s for s in measured if targets and len(targets) == len(spec.objectives)
               and all(meets_target(s["values"], o) for o in targets)
               and feasible(s["values"], spec.outcome_constraints)]
        return to_wire(ModelUpdate(
            campaign_id=self.campaign_id, sample_id=sample_id, causation_id=causation_id, sender=self.role,
            model_version=f"summary-{len(measured)}", n_train=len(measured), metrics=metrics,
            best={"sample_id": best["id"], "values": best["values"]} if best else {},
            recommend_stop=bool(hit),
            reason=f"sample {hit[0]['id']} meets every target" if hit else "",
        ))
