"""The designer: asks its strategy for candidates, given what has been measured and what is in flight."""

from __future__ import annotations

import bisect
from typing import Any

from athanor import registry
from athanor.agents.common import Agent, History
from athanor.errors import AthanorError
from athanor.messages import DesignProposal, DesignRequest, to_wire
from athanor.planners.base import Observation
from athanor.planners.space import DesignSpace
from athanor.pool import load_pool


def world_predictor(spec: Any) -> Any:
    """`designer.options.predictor: world`: the world's own differentiable model, as a torch function
    of the composition's fractions (in the campaign's element order). Only the designer gets it; a
    strategy never learns which world it came from."""
    world = registry.make_world(spec)
    if not hasattr(world, "differentiable_model") or spec.space.composition is None:
        raise AthanorError(f"designer.options.predictor: world {spec.world.kind!r} offers no differentiable model "
                           "of a composition; leave the option out to learn one from the data")
    return world.differentiable_model(list(spec.space.composition.elements))


def world_prior(spec: Any) -> Any:
    """`designer.options.prior: world`: the world's approximate model, known to be wrong (for the alloy
    world, the rigid-band moment as a function of the electron count), as a torch function of the
    composition's fractions. The strategy learns a correction to it from the measurements."""
    world = registry.make_world(spec)
    if not hasattr(world, "approximate_model") or spec.space.composition is None:
        raise AthanorError(f"designer.options.prior: world {spec.world.kind!r} offers no approximate model "
                           "of a composition; leave the option out to learn from the data alone")
    return world.approximate_model(list(spec.space.composition.elements))


def chgnet_model(spec: Any, options: dict[str, Any]) -> Any:
    """`designer.options.predictor: chgnet`: CHGNet differentiated through a crystal template (options
    `template`, `relax_weight`), its stability measured against the world's reference energies of the
    competing binaries (data a lab takes from a database; here the world's own relaxations)."""
    from athanor.planners.chgnet_predictor import ChgnetPredictor
    from athanor.planners.ensemble import default_device

    world = registry.make_world(spec)
    if not hasattr(world, "reference_energy"):
        raise AthanorError(f"designer.options.predictor: chgnet needs the competing binaries' energies; world "
                           f"{spec.world.kind!r} gives none (the perovskite world does)")
    try:
        return ChgnetPredictor(world.reference_energy, template=options.pop("template", "perovskite"),
                               roles=options.get("roles"), relax_weight=options.pop("relax_weight", 1.0),
                               device=str(default_device(options.get("device"))))
    except ValueError as exc:
        raise AthanorError(str(exc)) from None


def make_strategy(spec: Any, pool: Any = None) -> Any:
    """The campaign's strategy, built from `designer` (and, for a pool, the pool's input rows)."""
    strategy_cls = registry.load("athanor.strategies", spec.designer.strategy)
    options = dict(spec.designer.options)
    if options.get("predictor") == "world":
        options["predictor"] = world_predictor(spec)
    if options.get("prior") == "world":
        options["prior"] = world_prior(spec)
    if options.get("predictor") == "chgnet":
        # By default the measurements correct the pretrained prediction (a residual model): CHGNet is
        # the prior; `residual: false` trusts it alone.
        model = chgnet_model(spec, options)
        if options.pop("residual", True):
            options["predictor"], options["prior"] = None, model
        else:
            options["predictor"] = model
    return strategy_cls(DesignSpace(spec.space, pool), objectives=spec.objectives,
                        constraints=spec.outcome_constraints, seed=spec.seed, **options)


class DesignerAgent(Agent):
    role = "designer"

    def __init__(self, spec: dict[str, Any], campaign_id: str):
        super().__init__(spec, campaign_id)
        pool_spec = self.spec.space.pool
        pool = None
        if pool_spec is not None:
            pool = load_pool(pool_spec.dataset, pool_spec.inputs, []).to_numpy(dtype=float)
        self.strategy = make_strategy(self.spec, pool)
        self.feed = History()
        self._seqs: list[int] = []
        self._history: list[Observation] = []  # in sample order, whatever order they were finished in

    def _extend(self, feed: dict[str, Any]) -> bool:
        taken = self.feed.take(feed)
        if taken is None:
            return False
        new, replaced = taken
        if replaced:
            self._seqs, self._history = [], []
        for item in new:
            item = dict(item)
            seq = item.pop("seq")
            at = bisect.bisect(self._seqs, seq)
            self._seqs.insert(at, seq)
            self._history.insert(at, Observation(**item))
        return True

    def propose(self, request: dict[str, Any], feed: dict[str, Any],
                pending: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            message = self.receive(request, DesignRequest)
            if not self._extend(feed):
                return History.RESYNC
            candidates = self.strategy.propose(list(self._history), message.n,
                                               [Observation(**p) for p in pending])
            return to_wire(DesignProposal(
                campaign_id=self.campaign_id, causation_id=message.id, sender=self.role,
                batch=message.batch, strategy=self.strategy.name,
                model_version=getattr(self.strategy, "model_version", None), candidates=candidates,
            ))
        except Exception as exc:  # noqa: BLE001 -- answered as a Fault, the campaign decides
            return self.fault(request, "design", exc)
