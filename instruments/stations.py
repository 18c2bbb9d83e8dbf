"""Instrument stations: what an instrument offers the lab, by entry point `athanor.instruments`.

The contract, in the spirit of bluesky's `protocols.py` (`Station`):
- `role`: the step it performs, "synthesis" or "characterization";
- `hardware(world, spec)`: its devices' hardware by device name (instruments/hardware.py): what the
  simulated backend runs in process and what `athanor ioc` serves as PVs;
- `__init__(world, devices)`: the station over its ophyd devices (soft or EPICS: the same components);
- `plan(request, md)`: the Bluesky plan of one step, one run, `md` merged into its start document;
- `product(documents)` (synthesis): the product, read from that run's documents — also after a crash.

A lab adds an instrument with one module and one entry point:

    [project.entry-points."athanor.instruments"]
    glovebox_furnace = "mylab.furnace:GloveboxFurnace"

and names it in the campaign file: `instruments: [{name: f1, role: synthesis, kind: glovebox_furnace}]`.
Without `kind`, a station suits the world: a powder furnace where the world models doses and firings
(`lab_recipe`), else the one-box synthesizer; a diffractometer where it diffracts, else a probe.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Iterator, Protocol, runtime_checkable

from athanor import registry
from athanor.instruments import plans
from athanor.instruments.hardware import Diffractometer, Furnace, Hardware, PowderDoser, Synthesizer, probe_class


@runtime_checkable
class Station(Protocol):
    role: ClassVar[str]

    @classmethod
    def hardware(cls, world: Any, spec: Any) -> dict[str, Hardware]: ...

    def plan(self, request: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]: ...


class StationBase:
    role: ClassVar[str] = "synthesis"

    def __init__(self, world: Any, devices: dict[str, Any]):
        self.world = world
        self.devices = devices

    def product(self, documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """The product of a synthesis run, from the event that holds its start document's `product_field`."""
        start = next(d for n, d in documents if n == "start")
        field = start.get("product_field")
        events = [d for n, d in documents if n == "event" and field in d.get("data", {})]
        if not events:
            raise ValueError("the run's documents hold no product")
        return json.loads(events[-1]["data"][field])


class PowderFurnace(StationBase):
    """A powder doser and a box furnace: weigh the powders into a crucible, fire it."""

    role = "synthesis"

    @classmethod
    def hardware(cls, world: Any, spec: Any) -> dict[str, Hardware]:
        doser = PowderDoser(world)
        return {"doser": doser, "furnace": Furnace(world, doser)}

    def plan(self, request: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]:
        recipe = self.world.lab_recipe(request) if hasattr(self.world, "lab_recipe") else request
        furnace = self.devices["furnace"]
        return plans.fire(self.devices["doser"], furnace, recipe, {**md, "product_field": furnace.product.name})


class OneBoxSynthesizer(StationBase):
    """One box that takes the recipe and makes the product (worlds without powders and furnaces)."""

    role = "synthesis"

    @classmethod
    def hardware(cls, world: Any, spec: Any) -> dict[str, Hardware]:
        return {"synthesizer": Synthesizer(world)}

    def plan(self, request: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]:
        box = self.devices["synthesizer"]
        return plans.make(box, request, {**md, "product_field": box.product.name})


def _direct_outputs(world: Any, spec: Any) -> list[str]:
    direct = getattr(world, "direct_outputs", None)
    return [o for o in spec.output_names if direct is None or o in direct]


class XrdStation(StationBase):
    """A powder diffractometer, with a property probe for what the world measures directly."""

    role = "characterization"

    @classmethod
    def hardware(cls, world: Any, spec: Any) -> dict[str, Hardware]:
        found: dict[str, Hardware] = {"diffractometer": Diffractometer(world)}
        outputs = _direct_outputs(world, spec)
        if outputs:
            found["probe"] = probe_class(outputs)(world)
        return found

    def plan(self, request: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]:
        return plans.characterize(request["product"], list(self.devices.values()), md)


class ProbeStation(StationBase):
    """A property probe reading the world's outputs."""

    role = "characterization"

    @classmethod
    def hardware(cls, world: Any, spec: Any) -> dict[str, Hardware]:
        return {"probe": probe_class(list(spec.output_names))(world)}

    def plan(self, request: dict[str, Any], md: dict[str, Any]) -> Iterator[Any]:
        return plans.characterize(request["product"], list(self.devices.values()), md)


def default_kind(role: str, world: Any) -> str:
    if role == "synthesis":
        return "powder_furnace" if callable(getattr(world, "lab_recipe", None)) else "synthesizer"
    return "xrd" if callable(getattr(world, "diffract", None)) else "probe"


def station_for(spec: Any, instrument: Any, world: Any) -> type[StationBase]:
    """The station class of an instrument of the campaign (its `kind`, else what suits the world)."""
    cls = registry.load("athanor.instruments", instrument.kind or default_kind(instrument.role, world))
    if getattr(cls, "role", None) != instrument.role:
        from athanor.errors import AthanorError

        raise AthanorError(f"instruments: {instrument.name!r} has role {instrument.role} but a "
                           f"{instrument.kind} station performs {getattr(cls, 'role', 'no step')}")
    return cls
