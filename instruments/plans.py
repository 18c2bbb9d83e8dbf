"""Bluesky plans for the lab's steps, one run each, as a beamline plan drives its hardware: move the
setpoints with `mv`, then `trigger_and_read` — on soft devices and over Channel Access alike.

fire(doser, furnace, recipe, md): a clean crucible (the doser's `label`), every powder's hopper and mass
setpoint at once, one dispense (stream "doses": each hopper's balance reading), then the furnace's
program — temperatures and dwell times as arrays, ramp rate, atmosphere — and one firing (stream
"primary": temperature, state and the product record). `recipe` gives "doses" (or "precursors") with
`mass_g`, and "steps" ({temperature_c, time_h}), "ramp_c_per_min" and "atmosphere" (a world's
`lab_recipe` gives exactly this).

make(box, recipe, md): the one-box synthesizer's run.

characterize(product, devices, md): the specimen on every device, each read once (one event). The start
document says how to read it:
- "channels": {data key: output name} for the probes' readings ({} when none);
- "pattern_fields": {"two_theta": data key, "intensity": data key} when a diffractometer is read, both
  float arrays of the same length (degrees 2θ; counts);
- "candidate_phases": the phases to fit (target, precursors, decomposition products and side phases of
  this product), "amorphous_phases" (those without Bragg peaks), and, as the product names them,
  "target", "precursors", "decomposition_products" and "side_phases".
"""

from __future__ import annotations

import json
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np

from athanor.instruments.hardware import N_HOPPERS


def fire(doser: Any, furnace: Any, recipe: dict[str, Any], md: dict[str, Any] | None = None):
    md = dict(md or {})
    doses = [d for d in recipe.get("doses") or recipe.get("precursors") or [] if "mass_g" in d]
    steps = [{"temperature_c": float(s["temperature_c"]), "time_h": float(s.get("time_h", 0.0))}
             for s in recipe.get("steps") or [] if "temperature_c" in s]
    if not doses or not steps:
        raise ValueError("a furnace recipe needs doses (formula, mass_g) and steps (temperature_c, time_h)")
    if len(doses) > N_HOPPERS:
        raise ValueError(f"{len(doses)} powders and the doser has {N_HOPPERS} hoppers")
    inputs = recipe.get("inputs") or {}
    ramp = float(recipe.get("ramp_c_per_min", inputs.get("ramp_c_per_min", 5.0)))
    atmosphere = str(recipe.get("atmosphere", inputs.get("atmosphere", "air")))
    program = {"steps": steps, "ramp_c_per_min": ramp, "atmosphere": atmosphere}
    label = str(md.get("sample_id", ""))
    hoppers: list[Any] = [doser.label, label]
    for i, dose in enumerate(doses, start=1):
        hoppers += [getattr(doser, f"hopper{i}_powder"), str(dose["formula"]),
                    getattr(doser, f"hopper{i}_mass_sp"), float(dose["mass_g"])]
    for i in range(len(doses) + 1, N_HOPPERS + 1):  # no powder: the hopper stays shut, whatever its mass setpoint
        hoppers += [getattr(doser, f"hopper{i}_powder"), ""]

    @bpp.run_decorator(md={"plan_name": "synthesize", "doses": doses, "program": program, **md})
    def inner():
        yield from bps.mv(*hoppers)  # a clean crucible, and every hopper's setpoint
        yield from bps.trigger_and_read([doser], name="doses")
        yield from bps.mv(furnace.label, label, furnace.ramp_rate, ramp, furnace.atmosphere, atmosphere,
                          furnace.program_temperatures, np.array([s["temperature_c"] for s in steps]),
                          furnace.program_dwells, np.array([s["time_h"] for s in steps]))
        yield from bps.trigger_and_read([furnace])

    return (yield from inner())


def make(box: Any, recipe: dict[str, Any], md: dict[str, Any] | None = None):
    md = dict(md or {})

    @bpp.run_decorator(md={"plan_name": "synthesize", **md})
    def inner():
        yield from bps.mv(box.label, str(md.get("sample_id", "")), box.recipe, json.dumps(recipe))
        yield from bps.trigger_and_read([box])

    return (yield from inner())


def candidate_phases(product: dict[str, Any]) -> list[str]:
    """The phases a pattern of this product may show: target, precursors, decomposition products, side phases."""
    names = [product.get("target"), *product.get("precursors", []), *product.get("decomposition_products", []),
             *product.get("side_phases", [])]
    names = [n for n in dict.fromkeys(names) if n]
    return names or list(product.get("phases", {}))


def characterize(product: dict[str, Any], devices: list[Any], md: dict[str, Any] | None = None):
    md = dict(md or {})
    meta: dict[str, Any] = {"plan_name": "characterize", "channels": {
        getattr(d, attr).name: output for d in devices for attr, output in getattr(d, "outputs", {}).items()}}
    xrd = next((d for d in devices if hasattr(d, "two_theta") and hasattr(d, "counts")), None)
    if xrd is not None:
        meta["pattern_fields"] = {"two_theta": xrd.two_theta.name, "intensity": xrd.counts.name}
        meta["candidate_phases"] = candidate_phases(product)
        meta["amorphous_phases"] = [n for n in product.get("amorphous", []) if n in meta["candidate_phases"]]
        meta.update({k: product[k] for k in ("target", "precursors", "decomposition_products", "side_phases")
                     if k in product})
    label = str(md.get("sample_id", ""))
    loading = [x for d in devices for x in (d.label, label, d.sample, json.dumps(product))]

    @bpp.run_decorator(md={**meta, **md})
    def inner():
        yield from bps.mv(*loading)
        yield from bps.trigger_and_read(devices)

    return (yield from inner())
