"""Bluesky plans for the lab's steps. Each is one run whose documents record the raw data.

synthesize(doser, furnace, recipe, md): dose each powder (mv the doser to (formula, mass_g), then
trigger_and_read it: stream "doses"), set the furnace program and trigger_and_read the furnace
(stream "primary"; its `product` field holds the product JSON). `recipe` lists the powders as
"doses" (or "precursors") with `mass_g`, and the program as "steps" ({temperature_c, time_h}) with
"ramp_c_per_min" and "atmosphere" (a world's `lab_recipe` gives exactly this). The old form
synthesize(synthesizer, recipe, md) drives the one-box synthesizer of worlds without a furnace.

characterize(sample, probes, md): put the product on every probe and read them all once (one event).
The start document says how to read it:
- "channels": {data key: output name} for the scalar probes' channels (as before; {} when none);
- "pattern_fields": {"two_theta": data key, "intensity": data key} when a diffractometer is read,
  both float arrays of the same length (degrees 2θ; counts);
- "candidate_phases": the phases to fit: target, precursors, decomposition products and side phases
  of this product (from the product dict), and "amorphous_phases": those among them without Bragg
  peaks (a diffuse halo only); and, as the product names them, "target" (str), "precursors",
  "decomposition_products" and "side_phases" (lists of formulas).
The old form characterize(probe, product, md) still works.
"""

from __future__ import annotations

import json
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp


def synthesize(doser: Any, furnace: Any, recipe: Any = None, md: dict[str, Any] | None = None):
    """synthesize(doser, furnace, recipe, md=None); or synthesize(synthesizer, recipe, md=None)."""
    if hasattr(doser, "recipe"):  # the one-box synthesizer: its recipe is the second argument
        return (yield from _one_box(doser, furnace, md if md is not None else recipe))
    md = dict(md or {})
    doses = [d for d in recipe.get("doses") or recipe.get("precursors") or [] if "mass_g" in d]
    steps = [{"temperature_c": float(s["temperature_c"]), "time_h": float(s.get("time_h", 0.0))}
             for s in recipe.get("steps") or [] if "temperature_c" in s]
    if not doses or not steps:
        raise ValueError("a furnace recipe needs doses (formula, mass_g) and steps (temperature_c, time_h)")
    inputs = recipe.get("inputs") or {}
    ramp = float(recipe.get("ramp_c_per_min", inputs.get("ramp_c_per_min", 5.0)))
    atmosphere = str(recipe.get("atmosphere", inputs.get("atmosphere", "air")))
    hottest = max(steps, key=lambda s: s["temperature_c"])
    program = {"steps": steps, "ramp_c_per_min": ramp, "atmosphere": atmosphere}

    @bpp.run_decorator(md={"plan_name": "synthesize", "doses": doses, "program": program, **md})
    def inner():
        yield from bps.mv(doser.crucible, str(md.get("sample_id", "")))  # a clean crucible
        for dose in doses:
            yield from bps.mv(doser, (dose["formula"], float(dose["mass_g"])))
            yield from bps.trigger_and_read([doser], name="doses")
        yield from bps.mv(furnace.setpoint, hottest["temperature_c"], furnace.dwell, hottest["time_h"],
                          furnace.ramp_rate, ramp, furnace.atmosphere, atmosphere,
                          furnace.program, json.dumps(steps if len(steps) > 1 else []))
        yield from bps.trigger_and_read([furnace])

    return (yield from inner())


def _one_box(station: Any, recipe: dict[str, Any], md: dict[str, Any] | None):
    """Load the recipe into the synthesis station and make the product."""

    @bpp.run_decorator(md={"plan_name": "synthesize", **(md or {})})
    def inner():
        yield from bps.mv(station.recipe, json.dumps(recipe))
        yield from bps.trigger_and_read([station])

    return (yield from inner())


def candidate_phases(product: dict[str, Any]) -> list[str]:
    """The phases a pattern of this product may show: target, precursors, decomposition products, side phases."""
    names = [product.get("target"), *product.get("precursors", []), *product.get("decomposition_products", []),
             *product.get("side_phases", [])]
    names = [n for n in dict.fromkeys(names) if n]
    return names or list(product.get("phases", {}))


def characterize(sample: Any, probes: Any, md: dict[str, Any] | None = None):
    """characterize(sample, probes, md=None): read every probe once; or characterize(probe, product, md=None)."""
    if not isinstance(sample, dict):  # the old form: (probe, product)
        sample, probes = probes, sample
    probes = list(probes) if isinstance(probes, (list, tuple)) else [probes]
    meta: dict[str, Any] = {"plan_name": "characterize", "channels": {
        getattr(p, attr).name: output for p in probes for attr, output in getattr(p, "channels", {}).items()}}
    xrd = next((p for p in probes if hasattr(p, "two_theta") and hasattr(p, "intensity")), None)
    if xrd is not None:
        meta["pattern_fields"] = {"two_theta": xrd.two_theta.name, "intensity": xrd.intensity.name}
        meta["candidate_phases"] = candidate_phases(sample)
        meta["amorphous_phases"] = [n for n in sample.get("amorphous", []) if n in meta["candidate_phases"]]
        meta.update({k: sample[k] for k in ("target", "precursors", "decomposition_products", "side_phases")
                     if k in sample})

    @bpp.run_decorator(md={**meta, **(md or {})})
    def inner():
        for probe in probes:
            yield from bps.mv(probe.sample, json.dumps(sample))
        yield from bps.trigger_and_read(probes)

    return (yield from inner())
