"""An arc melter: weigh the elements into a button, melt it under argon, flip it, melt again.

The station (Athanor's `athanor.instruments` entry point) says which hardware the instrument has and
which Bluesky plan runs one synthesis on it. The hardware's setpoints carry the controller's limits:
Athanor checks every plan against them before anything moves, and `athanor dry-run` reports a plan
that would go beyond them.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp

from athanor.instruments.hardware import Channel, Hardware
from athanor.instruments.stations import StationBase


class ArcFurnace(Hardware):
    """The melter's controller: arc current, number of melts, the charge (as a recipe) and the product."""

    channels = (
        Channel("recipe", "text", writable=True, default="{}"),
        Channel("current_sp", "float", writable=True, units="A", default=0.0, limits=(50.0, 400.0)),
        Channel("melts", "int", writable=True, default=1, limits=(1, 8)),
        Channel("product", "text", kind="hinted"),
    )

    def _acquire(self) -> None:
        # The world decides what the button is (and whether the step faults), keyed by sample and step.
        product = self.world.synthesize(json.loads(self.values["recipe"]), key=self.key)
        self.values["product"] = json.dumps({**product, "melts": int(self.values["melts"])})


def melt(arc: Any, recipe: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]:
    """One button: the charge, the current and the melts set together, then one melt cycle read."""
    step = next((s for s in recipe.get("steps") or [] if s.get("action") == "arc_melt"), None)
    if step is None:
        raise ValueError("an arc-melter recipe needs an 'arc_melt' step (current_a, melts)")

    @bpp.run_decorator(md={"plan_name": "arc_melt", **md})
    def inner() -> Iterator[Any]:
        yield from bps.mv(arc.label, str(md.get("sample_id", "")), arc.recipe, json.dumps(recipe),
                          arc.current_sp, float(step["current_a"]), arc.melts, int(step["melts"]))
        yield from bps.trigger_and_read([arc])

    return (yield from inner())


class ArcMelter(StationBase):
    role = "synthesis"

    @classmethod
    def hardware(cls, world: Any, spec: Any) -> dict[str, Hardware]:
        return {"arc": ArcFurnace(world)}

    def plan(self, request: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]:
        arc = self.devices["arc"]
        return melt(arc, request, {**md, "product_field": arc.product.name})
