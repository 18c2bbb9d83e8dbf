"""Bluesky plans for the lab's steps. Each is one run whose documents record the raw data."""

from __future__ import annotations

import json
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp


def synthesize(station: Any, recipe: dict[str, Any], md: dict[str, Any] | None = None):
    """Load the recipe into the synthesis station and make the product."""

    @bpp.run_decorator(md={"plan_name": "synthesize", **(md or {})})
    def inner():
        yield from bps.mv(station.recipe, json.dumps(recipe))
        yield from bps.trigger_and_read([station])

    return (yield from inner())


def characterize(probe: Any, product: dict[str, Any], md: dict[str, Any] | None = None):
    """Put the product on the probe and read every channel once."""
    channels = {getattr(probe, attr).name: output for attr, output in probe.channels.items()}

    @bpp.run_decorator(md={"plan_name": "characterize", "channels": channels, **(md or {})})
    def inner():
        yield from bps.mv(probe.sample, json.dumps(product))
        yield from bps.trigger_and_read([probe])

    return (yield from inner())
