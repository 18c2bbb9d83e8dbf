"""The simulated lab's hardware, as its controllers see it: named channels and one action.

A `Hardware` is what an instrument's controller offers: setpoints an operator (or a plan) writes,
readbacks it publishes, a `state` and an `error`, and one action — `acquire()` — that does the
physical thing (dispense, fire, scan, measure) with the world computing what happens. It knows
nothing of ophyd or EPICS: devices.py wraps it in soft ophyd signals (the `simulated` backend), and
athanor/ioc.py serves the very same channels as Channel Access PVs (the `epics` backend), so a plan
drives both identically.

Every random draw is seeded from the sample on the instrument (`label`) and the step, as the world
does, so a step taken again — after a lost connection, or on another instrument of a pool — gives
the same answer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from athanor.simulators.base import World

N_HOPPERS = 8  # powders one crucible can take
MAX_TEXT = 1 << 16  # bytes a text channel holds (a product record, a sample on the stage)
MAX_POINTS = 1 << 15  # points an array channel holds (a powder pattern, a furnace program)
STATES = ("idle", "busy", "heating", "dwelling", "cooling", "fault")


@dataclass(frozen=True)
class Channel:
    """One named value of an instrument: its type, whether a plan writes it, and how it is read."""

    name: str
    dtype: str  # "float", "int", "str" (≤ 40 characters), "text" (long string) or "array" (floats)
    writable: bool = False
    kind: str = "normal"  # ophyd's: "hinted" (plotted), "normal" (read), "config" (described once)
    units: str = ""
    default: Any = None
    limits: tuple[float, float] | None = None  # what the controller accepts (low, high), as an EPICS DRVL/DRVH

    @property
    def initial(self) -> Any:
        if self.default is not None:
            return self.default
        return {"float": 0.0, "int": 0, "str": "", "text": "", "array": np.zeros(0)}[self.dtype]


COMMON = (Channel("label", "str", writable=True, kind="config"),  # the sample on the instrument (its id)
          Channel("state", "str", default="idle"), Channel("error", "text", kind="omitted"))


class Hardware:
    """An instrument's controller. Subclasses list their `channels` and implement `_acquire`."""

    channels: ClassVar[tuple[Channel, ...]] = ()
    role: ClassVar[str] = "synthesis"  # the step whose world stream the random draws come from

    def __init__(self, world: World):
        self.world = world
        self.values: dict[str, Any] = {c.name: c.initial for c in self.all_channels()}
        self.stalled = threading.Event()  # a drill: the next action never finishes (see `athanor ioc --stall`)

    @classmethod
    def all_channels(cls) -> tuple[Channel, ...]:
        return COMMON + cls.channels

    @property
    def key(self) -> str:
        return f"{self.values['label']}:{self.role}"

    def put(self, name: str, value: Any) -> None:
        self.values[name] = value

    def acquire(self) -> None:
        """Do the instrument's action; on a fault, `state` reads "fault", `error` says why, and it raises."""
        self.values.update(state="busy", error="")
        try:
            if self.stalled.is_set():
                threading.Event().wait()  # a stuck controller: the action never completes
            self._acquire()
        except Exception as exc:
            self.values.update(state="fault", error=f"{type(exc).__name__}: {exc}"[:MAX_TEXT])
            raise
        self.values["state"] = "idle"

    def _acquire(self) -> None:
        raise NotImplementedError


class PowderDoser(Hardware):
    """Hoppers of powder over a balance: each dispenses its mass setpoint into the crucible, and the
    balance reads what went in (the world's relative noise on it, when the campaign has noise).
    Putting a label is putting a clean crucible on the balance."""

    channels = tuple(c for i in range(1, N_HOPPERS + 1) for c in (
        Channel(f"hopper{i}_powder", "str", writable=True),
        Channel(f"hopper{i}_mass_sp", "float", writable=True, units="g", limits=(0.0, 25.0)),
        Channel(f"hopper{i}_mass", "float", kind="hinted", units="g"))) + (
        Channel("total_mass", "float", units="g"),)

    def __init__(self, world: World):
        super().__init__(world)
        self.crucible: list[tuple[str, float]] = []

    def put(self, name: str, value: Any) -> None:
        if name == "label":  # a label put on the balance is a clean crucible, even the same sample's again
            self.crucible = []
            self.values.update({f"hopper{i}_mass": 0.0 for i in range(1, N_HOPPERS + 1)}, total_mass=0.0)
        super().put(name, value)

    def _acquire(self) -> None:
        conditions = getattr(self.world, "conditions", None)
        noise = getattr(conditions, "noise", 0.0)
        for i in range(1, N_HOPPERS + 1):
            powder, mass = self.values[f"hopper{i}_powder"], float(self.values[f"hopper{i}_mass_sp"])
            if not powder or mass == 0:
                continue
            if not mass > 0:
                raise ValueError(f"hopper {i} cannot dispense {mass} g")
            if noise:
                mass = max(0.0, mass * (1.0 + noise * conditions.rng(f"{self.key}:dose{len(self.crucible)}").standard_normal()))
            self.crucible.append((powder, mass))
            self.values[f"hopper{i}_mass"] = mass
        self.values["total_mass"] = sum(m for _, m in self.crucible)


class Furnace(Hardware):
    """A programmable box furnace: a program of holds (temperatures and dwell times), a ramp rate and an
    atmosphere; running it fires the doser's crucible through the world's `synthesize` (which spends
    the scaled furnace time and may fault). `setpoint` is the program's current target, `temperature`
    the thermocouple's reading, `peak_temperature` the hottest it read in the last firing."""

    channels = (
        # A high-temperature box furnace (MoSi2 elements): a campaign's `limits` narrow these to its own.
        Channel("program_temperatures", "array", writable=True, units="degC", limits=(0.0, 1600.0)),
        Channel("program_dwells", "array", writable=True, units="h", limits=(0.0, 100.0)),
        Channel("ramp_rate", "float", writable=True, units="degC/min", default=5.0, limits=(0.1, 30.0)),
        Channel("atmosphere", "str", writable=True, default="air"),
        Channel("setpoint", "float", units="degC", default=25.0),
        Channel("temperature", "float", kind="hinted", units="degC", default=25.0),
        Channel("peak_temperature", "float", kind="hinted", units="degC", default=25.0),  # of the last firing
        Channel("product", "text", kind="hinted"),
    )

    def __init__(self, world: World, doser: PowderDoser):
        super().__init__(world)
        self.doser = doser

    def _acquire(self) -> None:
        temperatures = np.atleast_1d(np.asarray(self.values["program_temperatures"], float))
        dwells = np.atleast_1d(np.asarray(self.values["program_dwells"], float))
        if not len(temperatures) or len(temperatures) != len(dwells):
            raise ValueError(f"the program has {len(temperatures)} temperatures and {len(dwells)} dwell times")
        if not self.doser.crucible:
            raise ValueError("the crucible is empty")
        steps = [{"temperature_c": float(t), "time_h": float(h)} for t, h in zip(temperatures, dwells)]
        recipe = {"inputs": {"ramp_c_per_min": float(self.values["ramp_rate"]), "atmosphere": self.values["atmosphere"]},
                  "precursors": [{"formula": f, "mass_g": m} for f, m in self.doser.crucible], "steps": steps}
        self.values.update(state="heating", setpoint=float(temperatures.max()))
        product = self.world.synthesize(recipe, key=self.key)
        self.values.update(temperature=float(temperatures.max()), peak_temperature=float(temperatures.max()),
                           product=json.dumps(product), state="cooling")
        self.values.update(setpoint=25.0, temperature=25.0)


class Synthesizer(Hardware):
    """A one-box synthesis station for worlds that do not model powders and furnaces: it takes the
    recipe as a document and reports the product's record."""

    channels = (Channel("recipe", "text", writable=True, default="{}"), Channel("product", "text", kind="hinted"))

    def _acquire(self) -> None:
        self.values["product"] = json.dumps(self.world.synthesize(json.loads(self.values["recipe"]), key=self.key))


class Diffractometer(Hardware):
    """A powder diffractometer: a scan of the sample on the stage over the world's 2θ range."""

    role = "characterization"
    channels = (
        Channel("sample", "text", writable=True, default="{}"),  # the simulation's stand-in for the specimen
        Channel("two_theta_start", "float", kind="config", units="deg"),
        Channel("two_theta_stop", "float", kind="config", units="deg"),
        Channel("two_theta", "array", kind="hinted", units="deg"),
        Channel("counts", "array", kind="hinted", units="counts"),
    )

    def __init__(self, world: World):
        super().__init__(world)
        grid = np.asarray(getattr(world, "two_theta", np.zeros(0)), float)
        if len(grid):
            self.values.update(two_theta_start=float(grid[0]), two_theta_stop=float(grid[-1]))

    def _acquire(self) -> None:
        two_theta, counts = self.world.diffract(json.loads(self.values["sample"]), key=self.key)
        self.values.update(two_theta=np.asarray(two_theta, float), counts=np.asarray(counts, float))


def probe_class(outputs: list[str]) -> type[Hardware]:
    """A property probe with one reading per output of the world (channel names made identifiers)."""
    taken = {c.name for c in COMMON} | {"sample"}
    readings = {_identifier(o, taken): o for o in outputs}

    class PropertyProbe(Hardware):
        role = "characterization"
        channels = (Channel("sample", "text", writable=True, default="{}"),
                    *(Channel(attr, "float", kind="hinted", default=float("nan")) for attr in readings))
        outputs = readings  # channel -> the world's output name

        def _acquire(self) -> None:
            values = self.world.measure(json.loads(self.values["sample"]), probe="probe", key=self.key)
            self.values.update({attr: float(values[output]) for attr, output in readings.items()})

    return PropertyProbe


def _identifier(name: str, taken: set[str]) -> str:
    base = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower() or "value"
    base = base if base[0].isalpha() else f"v_{base}"
    attr, i = base, 2
    while attr in taken:
        attr, i = f"{base}_{i}", i + 1
    taken.add(attr)
    return attr
