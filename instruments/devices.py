"""Simulated ophyd devices backed by a world.

A device is told what to work on through a setpoint signal (the recipe, or the product to probe);
`trigger()` asks the world and publishes the result on its readback signals, so a Bluesky plan
reads it like any detector and the run's documents hold the raw data. These two are the generic
ones, for any world; lab.py has the doser, furnace and diffractometer of worlds that model them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from athanor.simulators.base import World


class _WorldDevice(Device):
    def __init__(self, *args: Any, world: World, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._world = world
        self.step_key = ""

    def _compute(self) -> None:
        raise NotImplementedError

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        try:
            self._compute()
        except Exception as exc:  # noqa: BLE001 -- the fault travels in the status, as hardware's would
            status.set_exception(exc)
        else:
            status.set_finished()
        return status


class SimulatedSynthesizer(_WorldDevice):
    """Takes a recipe (JSON) and makes the product the world says it makes."""

    recipe = Cpt(Signal, value="{}", kind="normal")
    product = Cpt(Signal, value="{}", kind="hinted")

    def _compute(self) -> None:
        product = self._world.synthesize(json.loads(self.recipe.get()), key=self.step_key)
        self.product.put(json.dumps(product))


class _ProbeBase(_WorldDevice):
    sample = Cpt(Signal, value="{}", kind="normal")
    channels: dict[str, str] = {}  # component name -> the world's output name

    def _compute(self) -> None:
        values = self._world.measure(json.loads(self.sample.get()), probe=self.name, key=self.step_key)
        for attr, output in self.channels.items():
            getattr(self, attr).put(float(values[output]))


def _attr(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower() or "value"
    base = base if base[0].isalpha() else f"v_{base}"
    attr, i = base, 2
    while attr in taken:
        attr, i = f"{base}_{i}", i + 1
    taken.add(attr)
    return attr


def make_probe(world: World, name: str = "probe", outputs: list[str] | None = None) -> _ProbeBase:
    """A property probe with one float channel per output of the world (names made identifiers), or
    per output named in `outputs`."""
    taken = {"sample"}
    channels = {_attr(output, taken): output for output in (world.outputs if outputs is None else outputs)}
    components = {attr: Cpt(Signal, value=float("nan"), kind="hinted") for attr in channels}
    cls = type("SimulatedPropertyProbe", (_ProbeBase,), {**components, "channels": channels})
    return cls(name=name, world=world)
