"""Plug-ins by entry point: a lab adds its own strategies and worlds without forking.

Entry-point groups ``athanor.strategies``, ``athanor.routes``, ``athanor.instruments`` and
``athanor.worlds``; the built-ins are listed here too,
so a source checkout works before it is installed.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from athanor.errors import AthanorError

BUILTIN = {
    "athanor.strategies": {
        "random": "athanor.planners.random:RandomStrategy",
        "sobol": "athanor.planners.random:SobolStrategy",
        "bayesian": "athanor.planners.bayesian:BayesianStrategy",
        "gradient": "athanor.planners.gradient:GradientStrategy",
    },
    "athanor.routes": {
        "direct": "athanor.planners.routes:DirectRoute",
        "solid_state": "athanor.planners.synthesis:SolidStateRoute",
    },
    "athanor.instruments": {
        "powder_furnace": "athanor.instruments.stations:PowderFurnace",
        "synthesizer": "athanor.instruments.stations:OneBoxSynthesizer",
        "xrd": "athanor.instruments.stations:XrdStation",
        "probe": "athanor.instruments.stations:ProbeStation",
    },
    "athanor.worlds": {
        "replay": "athanor.simulators.replay:ReplayWorld",
        "alloy": "athanor.simulators.alloy:AlloyWorld",
        "perovskite": "athanor.simulators.perovskite:PerovskiteWorld",
        "solid_state": "athanor.simulators.solid_state:SolidStateWorld",
    },
}


NUMERIC = ("float", "int", "array")  # channel types a limit applies to
KIND = {"athanor.strategies": "strategy", "athanor.routes": "synthesis route", "athanor.worlds": "world",
        "athanor.instruments": "instrument kind"}


def available(group: str) -> dict[str, str]:
    found = dict(BUILTIN[group])
    found.update({ep.name: ep.value for ep in entry_points(group=group)})
    return found


def load(group: str, name: str) -> Any:
    targets = available(group)
    if name not in targets:
        raise AthanorError(f"unknown {KIND[group]} {name!r}; known: {', '.join(sorted(targets))}")
    module, _, attr = targets[name].partition(":")
    return getattr(import_module(module), attr)


def make_world(spec: Any) -> Any:
    """The campaign's world, built from its spec (every world offers `from_campaign`)."""
    return load("athanor.worlds", spec.world.kind).from_campaign(spec)


def make_route(spec: Any) -> Any:
    """The campaign's synthesis route, built from `planner.options`."""
    cls = load("athanor.routes", spec.planner.route)
    try:
        return cls(**spec.planner.options)
    except TypeError as exc:
        raise AthanorError(f"planner.options: {exc}") from None


def check_plugins(spec: Any) -> None:
    """Fail early, with the file's field named, on a strategy or world nobody provides."""
    from athanor.errors import SpecError

    problems = []
    for field, group, name in (("designer.strategy", "athanor.strategies", spec.designer.strategy),
                               ("planner.route", "athanor.routes", spec.planner.route),
                               ("world.kind", "athanor.worlds", spec.world.kind)):
        known = available(group)
        if name not in known:
            problems.append(f"{field}: unknown {KIND[group]} {name!r}; known: {', '.join(sorted(known))}")
    known = available("athanor.instruments")
    for n, instrument in enumerate(spec.instruments):
        if instrument.kind is not None and instrument.kind not in known:
            problems.append(f"instruments.{n}.kind: unknown instrument kind {instrument.kind!r}; "
                            f"known: {', '.join(sorted(known))}")
    if problems:
        raise SpecError("campaign", problems)
    world = make_world(spec)  # a world checks that the campaign suits it (e.g. replay needs a pool space)
    make_route(spec)
    from athanor.instruments.stations import station_for

    for n, instrument in enumerate(spec.instruments):
        hardware = station_for(spec, instrument, world).hardware(world, spec)
        for where in instrument.limits:
            device, _, channel = where.partition(".")
            channels = {c.name: c for c in type(hardware[device]).all_channels()} if device in hardware else {}
            if device not in hardware:
                problems.append(f"instruments.{n}.limits.{where}: {instrument.name} has no device {device!r}; "
                                f"its devices: {', '.join(hardware)}")
            elif channel not in channels or not channels[channel].writable or channels[channel].dtype not in NUMERIC:
                settable = [c for c, ch in channels.items() if ch.writable and ch.dtype in NUMERIC]
                problems.append(f"instruments.{n}.limits.{where}: {device} has no setpoint {channel!r}; "
                                f"its numeric setpoints: {', '.join(settable)}")
    if problems:
        raise SpecError("campaign", problems)
