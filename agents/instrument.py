"""An instrument station: its ophyd devices and a Bluesky RunEngine, in its own actor.

The station runs a plan per step and returns the run's event-model documents; it never writes the
log itself. Faults (a device's status fails) come back as a `Fault` with the documents so far.

Which devices: what the world supports (instruments/lab.py). A synthesis station is a powder doser
and a furnace where the world models them (solid_state: the recipe becomes doses and a furnace
program through the world's `lab_recipe`), else the one-box synthesizer; a characterization station
is a diffractometer where the world diffracts, plus a scalar probe for what it measures directly.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from bluesky import RunEngine

from athanor import registry
from athanor.agents.common import Agent
from athanor.instruments.lab import characterization_devices, has_furnace, synthesis_devices
from athanor.instruments.plans import characterize, synthesize
from athanor.messages import CharacterizationRequest, SynthesisRecipe, SynthesisResult, to_wire


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class InstrumentAgent(Agent):
    def __init__(self, spec: dict[str, Any], campaign_id: str, name: str):
        super().__init__(spec, campaign_id)
        self.name = name
        self.role = f"instrument:{name}"
        config = next(i for i in self.spec.instruments if i.name == name)
        self.world = registry.make_world(self.spec)
        self.kind = config.role
        if self.kind == "synthesis":
            self.devices = synthesis_devices(self.world, name)
        else:
            self.devices = characterization_devices(self.world, name)
        self.device = self.devices[-1]  # the one whose reading is the step's result (product, or probe)
        # Signal handlers only work on a main thread, which an actor's worker is not.
        self.engine = RunEngine(context_managers=[])

    def run(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        """Run the step's plan; return its documents and the resulting message (or a Fault)."""
        documents: list[tuple[str, dict[str, Any]]] = []
        token = self.engine.subscribe(
            lambda name, doc: documents.append((name, json.loads(json.dumps(doc, default=_jsonable)))))
        start = time.perf_counter()
        try:
            message = self.receive(request, SynthesisRecipe if self.kind == "synthesis" else CharacterizationRequest)
            # The world seeds its noise and faults by sample and step, not by campaign id, so the
            # same seed replays the same campaign.
            for device in self.devices:
                device.step_key = f"{message.sample_id}:{self.kind}"
            md = {"sample_id": message.sample_id, "idempotency_key": key, "campaign_id": self.campaign_id}
            if isinstance(message, SynthesisRecipe):
                recipe = message.model_dump(mode="json")
                if has_furnace(self.world):  # weigh the powders into a crucible, then fire it
                    self.engine(synthesize(*self.devices, self.world.lab_recipe(recipe), md=md))
                else:
                    self.engine(synthesize(self.device, recipe, md=md))
                events = [doc for name, doc in documents if name == "event"]
                product = json.loads(events[-1]["data"][self.device.product.name])
                result: dict[str, Any] | None = to_wire(SynthesisResult(
                    campaign_id=self.campaign_id, sample_id=message.sample_id, causation_id=message.id,
                    sender=self.role, instrument=self.name, product=product,
                    run_uids=[d["uid"] for n, d in documents if n == "start"],
                    duration_s=time.perf_counter() - start))
            else:
                self.engine(characterize(message.product, self.devices, md=md))
                result = None  # the characterizer interprets the documents
        except Exception as exc:  # noqa: BLE001 -- an instrument fault fails the sample, not the campaign
            result = self.fault(request, "synthesize" if self.kind == "synthesis" else "characterize",
                                getattr(exc, "__cause__", None) or exc)
        finally:
            self.engine.unsubscribe(token)
        return {"documents": documents, "message": result, "duration_s": time.perf_counter() - start}
