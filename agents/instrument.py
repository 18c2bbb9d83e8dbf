"""An instrument: its station's ophyd devices and a Bluesky RunEngine, in its own actor.

The station (instruments/stations.py) says which devices and which plan; the backend whether the
devices are soft signals over the world in this process (`simulated`) or EPICS PVs of an IOC
(`epics`). The agent runs a plan per step and returns the run's event-model documents; it never writes
the log itself. But every document its RunEngine emits is written into the store's `documents` table
as it is emitted (athanor/documents.py `DocumentSink`), the start document, with the step's
idempotency key, before the plan moves anything: after a crash the store tells whether the step began
and whether its run finished.

What a reply says besides the documents and the message (a result, or a `Fault` when the instrument
itself failed):
- "unavailable": the instrument did not answer, `retries` times after the first with a doubling
  backoff; nothing was begun (no run was opened), so the step may go to another instrument;
- "lost": the control system lost the instrument mid-step (a PV gone, an action that never completed
  within `timeout_s`): what happened to the sample is unknown. A characterization is measured again
  (a new run, same key) up to `retries` times first; a synthesis never is — the conductor applies
  the instrument's `on_interrupted` policy, as after a crash.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from bluesky import RunEngine
from ophyd.utils import LimitError

from athanor import registry
from athanor.agents.common import Agent
from athanor.documents import DocumentSink
from athanor.instruments.devices import ControlSystemError, check_limits, epics_device, soft_device, use_caproto
from athanor.instruments.stations import station_for
from athanor.messages import CharacterizationRequest, Fault, SynthesisRecipe, SynthesisResult, to_wire
from athanor.simulators.base import InstrumentFault


class InstrumentAgent(Agent):
    def __init__(self, spec: dict[str, Any], campaign_id: str, name: str, store_url: str | None = None,
                 channel_access: dict[str, str] | None = None, wrap_world: Callable[[Any], Any] | None = None):
        super().__init__(spec, campaign_id)
        self.name = name
        self.role = f"instrument:{name}"
        self.config = self.spec.instrument_named(name)
        self.kind = self.config.role
        self.world = registry.make_world(self.spec)
        if wrap_world is not None:
            self.world = wrap_world(self.world)
        station = station_for(self.spec, self.config, self.world)
        hardware = station.hardware(self.world, self.spec)
        if self.config.backend == "epics":
            from athanor.ioc import pv_prefix

            os.environ.update(channel_access or {})  # where the IOC is: before the first PV is made
            use_caproto()
            devices = {dev: epics_device(type(hw), pv_prefix(self.spec, name, dev), f"{name}_{dev}",
                                         self.config.timeout_s, self.config.allowed(dev)) for dev, hw in hardware.items()}
        else:
            devices = {dev: soft_device(hw, f"{name}_{dev}", self.config.allowed(dev)) for dev, hw in hardware.items()}
        self.station = station(self.world, devices)
        self.devices = list(devices.values())
        # Signal handlers only work on a main thread, which an actor's worker is not.
        self.engine = RunEngine(context_managers=[])
        self.store = None
        if store_url is not None:
            from athanor.store import Store

            self.store = Store(store_url, campaign_id, retry_s=self.spec.store_retry_s)
        self.sink = DocumentSink(self.store.add_documents if self.store is not None else _keep)

    def run(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        """Run the step's plan; return its documents and the resulting message (or what went wrong)."""
        start = time.perf_counter()
        tries = 0
        while True:
            try:
                self._reach()
                reply = self._run_once(request, key)
            except ControlSystemError as exc:  # not reached: nothing was begun
                reply = {"documents": [], "message": None, "unavailable": str(exc)}
            again = "unavailable" in reply or ("lost" in reply and self.kind == "characterization")
            if not again or tries >= self.config.retries:
                return {**reply, "duration_s": time.perf_counter() - start, "tries": tries + 1}
            time.sleep(self.config.backoff_s * 2 ** tries)
            tries += 1

    def _reach(self) -> None:
        for device in self.devices:
            if hasattr(device, "check_connection"):
                device.check_connection()

    def _run_once(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        step = "synthesize" if self.kind == "synthesis" else "characterize"
        self.sink.begin(request.get("sample_id") if isinstance(request, dict) else None, key, step)
        token = self.engine.subscribe(self.sink)
        start = time.perf_counter()
        reply: dict[str, Any] = {"message": None}
        try:
            message = self.receive(request, SynthesisRecipe if self.kind == "synthesis" else CharacterizationRequest)
            md = {"sample_id": message.sample_id, "idempotency_key": key, "step": step,
                  "campaign_id": self.campaign_id, "instrument": self.name}
            payload = message.model_dump(mode="json")
            beyond = check_limits(self.station.plan(payload, md))  # a plan is a generator: one to check, one to run
            if beyond:  # refused before anything moves: no run is opened, the sample fails with the reason
                reply["message"] = to_wire(Fault(
                    campaign_id=self.campaign_id, sample_id=message.sample_id, causation_id=message.id,
                    sender=self.role, step=step, limit_violations=beyond,
                    error=f"{self.name} refused the plan, beyond its limits: {'; '.join(beyond)}"))
                return {**reply, "documents": []}
            self.engine(self.station.plan(payload, md))
            if isinstance(message, SynthesisRecipe):
                reply["message"] = to_wire(SynthesisResult(
                    campaign_id=self.campaign_id, sample_id=message.sample_id, causation_id=message.id,
                    sender=self.role, instrument=self.name, product=self.station.product(self.sink.documents),
                    run_uids=[d["uid"] for n, d in self.sink.documents if n == "start"],
                    duration_s=time.perf_counter() - start))
        except Exception as exc:  # noqa: BLE001 -- an instrument fault fails the sample, not the campaign
            cause = root_cause(exc)
            if isinstance(cause, (ControlSystemError, TimeoutError, ConnectionError)) and not isinstance(
                    cause, InstrumentFault):
                reply["lost"] = f"{self.name}: {cause}"
            else:
                reply["message"] = self.fault(request, step, cause)
                if isinstance(cause, LimitError):  # refused by a setpoint mid-plan (a plan that computes one)
                    reply["message"]["limit_violations"] = [str(cause)]
        finally:
            self.engine.unsubscribe(token)
        return {**reply, "documents": self.sink.documents}


def root_cause(exc: BaseException) -> BaseException:
    """What actually failed under a RunEngine's `FailedStatus` (its status's exception) or a chain: the
    first of Athanor's own errors, which say it in the lab's terms, else the innermost."""
    for _ in range(8):
        if isinstance(exc, (ControlSystemError, InstrumentFault)):
            return exc
        status = exc.args[0] if exc.args else None
        inner = exc.__cause__ or (status.exception() if hasattr(status, "exception") and callable(
            status.exception) else None)
        if inner is None or inner is exc:
            return exc
        exc = inner
    return exc


def _keep(*_args: Any) -> None:
    """Without a store (a station used on its own) the documents are only returned."""
