"""An instrument station: its ophyd devices and a Bluesky RunEngine, in its own actor.

The station runs a plan per step and returns the run's event-model documents; it never writes the
log itself. But every document its RunEngine emits is written into the store's `documents` table as it
is emitted (athanor/documents.py `DocumentSink`), the start document, with the step's idempotency key,
before the plan moves anything: after a crash the store tells whether the step began and whether its run
finished. Faults (a device's status fails) come back as a `Fault` with the documents so far.

Which devices: what the world supports (instruments/lab.py). A synthesis station is a powder doser
and a furnace where the world models them (solid_state: the recipe becomes doses and a furnace
program through the world's `lab_recipe`), else the one-box synthesizer; a characterization station
is a diffractometer where the world diffracts, plus a scalar probe for what it measures directly.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bluesky import RunEngine

from athanor import registry
from athanor.agents.common import Agent
from athanor.documents import DocumentSink
from athanor.instruments.lab import characterization_devices, has_furnace, synthesis_devices
from athanor.instruments.plans import characterize, synthesize
from athanor.messages import CharacterizationRequest, SynthesisRecipe, SynthesisResult, to_wire


class InstrumentAgent(Agent):
    def __init__(self, spec: dict[str, Any], campaign_id: str, name: str, store_url: str | None = None):
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
        self.store = None
        if store_url is not None:
            from athanor.store import Store

            self.store = Store(store_url, campaign_id, retry_s=self.spec.store_retry_s)
        self.sink = DocumentSink(self.store.add_documents if self.store is not None else _keep)

    def run(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        """Run the step's plan; return its documents and the resulting message (or a Fault)."""
        step = "synthesize" if self.kind == "synthesis" else "characterize"
        self.sink.begin(request.get("sample_id") if isinstance(request, dict) else None, key, step)
        token = self.engine.subscribe(self.sink)
        start = time.perf_counter()
        try:
            message = self.receive(request, SynthesisRecipe if self.kind == "synthesis" else CharacterizationRequest)
            # The world seeds its noise and faults by sample and step, not by campaign id, so the
            # same seed replays the same campaign.
            for device in self.devices:
                device.step_key = f"{message.sample_id}:{self.kind}"
            md = {"sample_id": message.sample_id, "idempotency_key": key, "step": step,
                  "campaign_id": self.campaign_id, "instrument": self.name}
            if self.kind == "synthesis":  # where the product is read: what a recovery after a crash reads
                md["product_field"] = self.device.product.name
            if isinstance(message, SynthesisRecipe):
                recipe = message.model_dump(mode="json")
                if has_furnace(self.world):  # weigh the powders into a crucible, then fire it
                    self.engine(synthesize(*self.devices, self.world.lab_recipe(recipe), md=md))
                else:
                    self.engine(synthesize(self.device, recipe, md=md))
                events = [doc for name, doc in self.sink.documents if name == "event"]
                product = json.loads(events[-1]["data"][self.device.product.name])
                result: dict[str, Any] | None = to_wire(SynthesisResult(
                    campaign_id=self.campaign_id, sample_id=message.sample_id, causation_id=message.id,
                    sender=self.role, instrument=self.name, product=product,
                    run_uids=[d["uid"] for n, d in self.sink.documents if n == "start"],
                    duration_s=time.perf_counter() - start))
            else:
                self.engine(characterize(message.product, self.devices, md=md))
                result = None  # the characterizer interprets the documents
        except Exception as exc:  # noqa: BLE001 -- an instrument fault fails the sample, not the campaign
            result = self.fault(request, step, getattr(exc, "__cause__", None) or exc)
        finally:
            self.engine.unsubscribe(token)
        return {"documents": self.sink.documents, "message": result, "duration_s": time.perf_counter() - start}


def _keep(*_args: Any) -> None:
    """Without a store (a station used on its own) the documents are only returned."""
