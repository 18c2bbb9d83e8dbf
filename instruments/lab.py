"""Simulated lab hardware for worlds that model it: a powder doser, a furnace and a diffractometer.

A world says what it supports by what it has: `lab_recipe` (a recipe → powders to weigh and a
furnace program, fed back to its `synthesize`) means samples are made by dosing powders into a
crucible and firing it; `diffract` means they are read by powder XRD. `synthesis_devices` and
`characterization_devices` build what a world supports, and otherwise the generic synthesizer and
property probe of devices.py (a scalar world's station is exactly what it always was).

- PowderDoser: setpoint (formula, mass_g) by `set` (so `bps.mv(doser, ("MgCO3", 0.84))`); `trigger()`
  dispenses it: readback `dispensed` (g; the world's relative noise on it, seeded from the step key
  and the dose's number, when the campaign has noise) and `contents` (JSON formula → g). Putting a
  label on `crucible` starts a clean crucible.
- Furnace: `setpoint` (°C), `ramp_rate` (°C/min), `dwell` (h), `atmosphere`, and `program` (JSON list
  of {temperature_c, time_h} holds, for several; empty means the one hold setpoint/dwell). `trigger()`
  fires the doser's crucible through the world's `synthesize` (which spends the scaled furnace time
  and may fault); readbacks `temperature` (°C, the hottest hold reached) and `product` (JSON).
- Diffractometer: `sample` (JSON product); `trigger()` scans it with the world's `diffract` (instrument
  time, faults, counting noise seeded by the step key); readbacks `two_theta` and `intensity`, numpy
  arrays (described as dtype "array" with their shape, so the event documents carry them).

A failure comes back as a failed status, as hardware's would (devices._WorldDevice.trigger).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.status import DeviceStatus

from athanor.instruments.devices import SimulatedSynthesizer, _WorldDevice, make_probe
from athanor.simulators.base import World


class _CrucibleSignal(Signal):
    """The crucible's label: putting one empties the doser (a clean crucible on the balance)."""

    def put(self, value: Any, **kwargs: Any) -> None:
        if self.parent is not None:
            self.parent.empty()
        super().put(value, **kwargs)


class PowderDoser(_WorldDevice):
    crucible = Cpt(_CrucibleSignal, value="", kind="config")
    formula = Cpt(Signal, value="", kind="normal")
    mass_setpoint = Cpt(Signal, value=0.0, kind="normal")  # g
    dispensed = Cpt(Signal, value=0.0, kind="hinted")  # g, the balance's reading
    contents = Cpt(Signal, value="{}", kind="normal")  # JSON: formula -> g in the crucible

    def __init__(self, *args: Any, world: World, **kwargs: Any):
        super().__init__(*args, world=world, **kwargs)
        self._doses: list[tuple[str, float]] = []

    def empty(self) -> None:
        self._doses = []
        self.contents.put("{}")

    def doses(self) -> list[dict[str, Any]]:
        """What is in the crucible, dose by dose, as a recipe's precursor list."""
        return [{"formula": f, "mass_g": m} for f, m in self._doses]

    def set(self, value: Any) -> DeviceStatus:
        """Setpoint: (formula, mass_g) or {"formula": ..., "mass_g": ...}."""
        formula, mass = (value["formula"], value["mass_g"]) if isinstance(value, dict) else value
        self.formula.put(str(formula))
        self.mass_setpoint.put(float(mass))
        status = DeviceStatus(self)
        status.set_finished()
        return status

    def _compute(self) -> None:
        mass = float(self.mass_setpoint.get())
        if not mass >= 0:
            raise ValueError(f"cannot dispense {mass} g")
        conditions = getattr(self._world, "conditions", None)
        noise = getattr(conditions, "noise", 0.0)
        if noise and mass > 0:
            rng = conditions.rng(f"{self.step_key}:dose{len(self._doses)}")
            mass = max(0.0, mass * (1.0 + noise * rng.standard_normal()))
        self._doses.append((self.formula.get(), mass))
        totals: dict[str, float] = {}
        for f, m in self._doses:
            totals[f] = totals.get(f, 0.0) + m
        self.dispensed.put(mass)
        self.contents.put(json.dumps(totals))


class Furnace(_WorldDevice):
    setpoint = Cpt(Signal, value=25.0, kind="normal")  # °C
    ramp_rate = Cpt(Signal, value=5.0, kind="normal")  # °C/min
    dwell = Cpt(Signal, value=0.0, kind="normal")  # h
    atmosphere = Cpt(Signal, value="air", kind="normal")
    program = Cpt(Signal, value="[]", kind="normal")  # JSON list of {temperature_c, time_h}
    temperature = Cpt(Signal, value=25.0, kind="hinted")  # °C, readback
    product = Cpt(Signal, value="{}", kind="hinted")

    def __init__(self, *args: Any, world: World, doser: PowderDoser, **kwargs: Any):
        super().__init__(*args, world=world, **kwargs)
        self._doser = doser

    def _compute(self) -> None:
        steps = json.loads(self.program.get()) or [{"temperature_c": float(self.setpoint.get()),
                                                    "time_h": float(self.dwell.get())}]
        recipe = {"inputs": {"ramp_c_per_min": float(self.ramp_rate.get()), "atmosphere": self.atmosphere.get()},
                  "precursors": self._doser.doses(), "steps": steps}
        product = self._world.synthesize(recipe, key=self.step_key)
        self.temperature.put(float(max(s["temperature_c"] for s in steps)))
        self.product.put(json.dumps(product))


class Diffractometer(_WorldDevice):
    sample = Cpt(Signal, value="{}", kind="normal")
    two_theta = Cpt(Signal, value=np.zeros(0), kind="hinted")  # degrees
    intensity = Cpt(Signal, value=np.zeros(0), kind="hinted")  # counts

    def _compute(self) -> None:
        two_theta, intensity = self._world.diffract(json.loads(self.sample.get()), key=self.step_key)
        self.two_theta.put(np.asarray(two_theta, dtype=float))
        self.intensity.put(np.asarray(intensity, dtype=float))


def has_furnace(world: World) -> bool:
    return callable(getattr(world, "lab_recipe", None))


def has_diffractometer(world: World) -> bool:
    return callable(getattr(world, "diffract", None))


def synthesis_devices(world: World, name: str) -> list[Any]:
    """[doser, furnace] for a world that models them, else [the one-box synthesizer]."""
    if has_furnace(world):
        doser = PowderDoser(name=f"{name}_doser", world=world)
        return [doser, Furnace(name=f"{name}_furnace", world=world, doser=doser)]
    return [SimulatedSynthesizer(name=name, world=world)]


def characterization_devices(world: World, name: str) -> list[Any]:
    """A diffractometer where the world diffracts, plus a scalar probe for the outputs the world
    measures directly (`direct_outputs`; every output for a world that does not say)."""
    devices: list[Any] = [Diffractometer(name=f"{name}_xrd", world=world)] if has_diffractometer(world) else []
    direct = getattr(world, "direct_outputs", None)
    outputs = list(world.outputs) if direct is None else [o for o in world.outputs if o in direct]
    if outputs or not devices:
        devices.append(make_probe(world, name=name, outputs=outputs))
    return devices
