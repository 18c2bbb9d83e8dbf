"""A lab's shared instruments and their scheduler, as long-lived Ray actors (`athanor lab serve`).

`LabInstrument` is one instrument of the lab. Each campaign that borrows it attaches once: the
instrument builds that campaign's station (the same `InstrumentAgent` a campaign's own instrument
is: its devices over the campaign's world, documents into the campaign's store). It runs one step at
a time, whichever campaign sent it, and counts the time it spends running steps. Its methods run on
a few threads so that `state` answers while a step runs; a lock keeps the steps one at a time.

`LabScheduler` arbitrates (athanor/scheduling.py has the policy): a campaign acquires a grant for a
step, logs its intent, and has the scheduler run the step on the granted instrument; the grant is
returned when the step ends, also when the campaign that asked has died meanwhile. The scheduler
watches each campaign's presence actor (owned by the campaign's driver, so it dies with it) and
each instrument: a campaign gone leaves (its waiting requests and unused grants are dropped), an
instrument gone (its node was lost) is quarantined for every campaign.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError

from athanor.lab import Lab, actor_name
from athanor.scheduling import Arbiter

WATCH_S = 1.0  # how often the scheduler looks for campaigns and instruments that are gone
PING_TIMEOUT_S = 10.0


class LabInstrument:
    def __init__(self, lab: dict[str, Any], name: str, channel_access: dict[str, str] | None = None):
        self.lab = Lab.model_validate(lab)
        self.config = self.lab.instrument_named(name)
        self.name = name
        self.channel_access = channel_access or {}
        self.stations: dict[str, Any] = {}  # campaign id -> its InstrumentAgent on this instrument
        self._one_step = threading.Lock()
        self.busy_s = 0.0
        self.steps = 0
        self.current: dict[str, Any] | None = None
        self.served_at = time.time()
        self.node_id = ray.get_runtime_context().get_node_id()

    def attach(self, campaign_id: str, spec: dict[str, Any], store_url: str | None) -> str:
        """Build this campaign's station (its world, devices and RunEngine) on this instrument."""
        from athanor.agents.instrument import InstrumentAgent

        if campaign_id not in self.stations:
            self.stations[campaign_id] = InstrumentAgent(spec, campaign_id, self.name, store_url, self.channel_access)
        return self.node_id

    def detach(self, campaign_id: str) -> None:
        self.stations.pop(campaign_id, None)

    def run(self, campaign_id: str, request: dict[str, Any], key: str) -> dict[str, Any]:
        station = self.stations.get(campaign_id)
        if station is None:
            return {"documents": [], "message": None,
                    "unavailable": f"{self.name}: campaign {campaign_id} is not attached to it"}
        with self._one_step:
            sample = request.get("sample_id") if isinstance(request, dict) else None
            self.current = {"campaign": campaign_id, "sample": sample, "step": station.kind, "since": time.time()}
            start = time.perf_counter()
            try:
                return station.run(request, key)
            finally:
                self.busy_s += time.perf_counter() - start
                self.steps += 1
                self.current = None

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.config.role, "node_id": self.node_id, "pid": os.getpid(),
                "busy_with": self.current, "busy_s": round(self.busy_s, 3), "steps_run": self.steps,
                "served_at": self.served_at, "campaigns": sorted(self.stations)}


class CampaignPresence:
    """Owned by a campaign's driver: Ray ends it when the driver ends, which tells the scheduler."""

    def ping(self) -> bool:
        return True


class LabScheduler:
    def __init__(self, lab: dict[str, Any]):
        self.lab = Lab.model_validate(lab)
        self.arbiter = Arbiter({i.name: i.role for i in self.lab.instruments}, self.lab.scheduler,
                               depth=self.lab.queue_depth)
        self.handles: dict[str, Any] = {}
        self.owners: dict[str, Any] = {}  # campaign id -> its presence actor
        self.joined: dict[str, dict[str, Any]] = {}
        self.futures: dict[int, asyncio.Future[Any]] = {}  # request seq -> its waiting acquire
        self.started_at = time.time()
        self.watcher: asyncio.Task[None] | None = None

    def _instrument(self, name: str) -> Any:
        if name not in self.handles:
            self.handles[name] = ray.get_actor(actor_name(name), namespace=self.lab.namespace)
        return self.handles[name]

    async def ping(self) -> str:
        if self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())
        return ray.get_runtime_context().get_node_id()

    # --- campaigns ---------------------------------------------------------------------------------
    async def join(self, campaign_id: str, priority: int, owner: Any, spec: dict[str, Any],
                   store_url: str | None) -> dict[str, Any]:
        """Attach the campaign to every instrument in service; the lab's instruments and their nodes."""
        await self.ping()
        spec = {**spec, "lab": None, "instruments": [i.for_campaign().model_dump(mode="json")
                                                     for i in self.lab.instruments]}
        in_service = [i.name for i in self.lab.instruments if self.arbiter.instruments[i.name].quarantined is None]
        replies = await asyncio.gather(*[self._instrument(n).attach.remote(campaign_id, spec, store_url)
                                         for n in in_service], return_exceptions=True)
        nodes = {}
        for name, reply in zip(in_service, replies):
            if isinstance(reply, RayActorError):
                self.arbiter.quarantine(name, f"{name} is gone (its actor or node was lost)")
            elif isinstance(reply, BaseException):
                for other in in_service:
                    self._instrument(other).detach.remote(campaign_id)
                return {"error": f"{name} cannot serve this campaign: {_one_line(reply)}"}
            else:
                nodes[name] = reply
        self.arbiter.join(campaign_id, priority)
        self.owners[campaign_id] = owner
        self.joined[campaign_id] = {"priority": priority, "joined_at": time.time()}
        return {"instruments": [i.model_dump(mode="json") for i in self.lab.instruments], "nodes": nodes,
                "policy": self.lab.scheduler, "quarantined": self._quarantined()}

    async def leave(self, campaign_id: str) -> None:
        dropped, _unused = self.arbiter.leave(campaign_id)
        for request in dropped:
            future = self.futures.pop(request.seq, None)
            if future is not None and not future.done():
                future.set_result(None)
        self.owners.pop(campaign_id, None)
        self.joined.pop(campaign_id, None)
        for name in self.arbiter.instruments:
            try:
                self._instrument(name).detach.remote(campaign_id)
            except (RayError, ValueError):
                pass
        self._assign()

    # --- steps -------------------------------------------------------------------------------------
    async def acquire(self, campaign_id: str, role: str, sample_id: str | None, step: str | None) -> Any:
        """[instrument, grant id] once the policy gives this step an instrument; None if the campaign left."""
        try:
            request = self.arbiter.ask(campaign_id, role, sample_id, step)
        except KeyError as exc:
            return {"error": str(exc.args[0]), "not_joined": campaign_id not in self.arbiter.priority}
        future = asyncio.get_running_loop().create_future()
        self.futures[request.seq] = future
        self._assign()
        try:
            return await future
        except asyncio.CancelledError:
            self.futures.pop(request.seq, None)
            self.arbiter.withdraw(request)
            raise

    def _assign(self) -> None:
        while True:
            unclaimed = []
            for request, grant in self.arbiter.assign():
                future = self.futures.pop(request.seq, None)
                if future is None or future.done():  # the asker is gone: the grant goes back
                    unclaimed.append(grant.id)
                else:
                    future.set_result([grant.instrument, grant.id])
            if not unclaimed:
                return
            for grant_id in unclaimed:
                self.arbiter.finish(grant_id)

    async def run(self, campaign_id: str, grant_id: int, request: dict[str, Any], key: str) -> dict[str, Any]:
        """Run a granted step on its instrument; the instrument is free for the next grant when it ends."""
        grant = self.arbiter.start(grant_id)
        if grant is None or grant.campaign != campaign_id:
            return {"documents": [], "message": None, "unavailable": f"grant {grant_id} is not held by {campaign_id}"}
        try:
            return await self._instrument(grant.instrument).run.remote(campaign_id, request, key)
        except RayActorError as exc:
            reason = f"{grant.instrument} was lost mid-step with its actor or node ({_one_line(exc)})"
            self.arbiter.quarantine(grant.instrument, reason)
            return {"documents": [], "message": None, "lost": reason, "quarantined": reason}
        finally:
            self.arbiter.finish(grant_id)
            self._assign()

    async def release(self, campaign_id: str, grant_id: int) -> None:
        """Give back a grant that was not used (its step went no further)."""
        grant = self.arbiter.grant(grant_id)
        if grant is not None and grant.campaign == campaign_id and grant.started_at is None:
            self.arbiter.finish(grant_id)
            self._assign()

    # --- service -----------------------------------------------------------------------------------
    async def quarantine(self, name: str, reason: str) -> None:
        if name in self.arbiter.instruments:
            self.arbiter.quarantine(name, reason)

    async def restore(self, name: str) -> bool:
        if name not in self.arbiter.instruments:
            return False
        self.arbiter.restore(name)
        self._assign()
        return True

    def _quarantined(self) -> dict[str, str]:
        return {n: s.quarantined for n, s in self.arbiter.instruments.items() if s.quarantined is not None}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                for campaign_id, owner in list(self.owners.items()):
                    try:
                        await asyncio.wait_for(owner.ping.remote(), PING_TIMEOUT_S)
                    except ActorUnavailableError:
                        pass  # unreachable for now, not gone
                    except RayActorError:
                        await self.leave(campaign_id)
                    except (asyncio.TimeoutError, GetTimeoutError, RayError):
                        pass  # slow, not gone
                await self._instrument_states()
            except Exception:  # noqa: BLE001 -- the watch must outlive any one surprise
                logging.getLogger(__name__).exception("lab %s: watching campaigns and instruments", self.lab.lab)

    async def _instrument_states(self) -> dict[str, dict[str, Any]]:
        names = list(self.arbiter.instruments)

        async def state(name: str) -> Any:
            try:
                return await asyncio.wait_for(self._instrument(name).state.remote(), PING_TIMEOUT_S)
            except (asyncio.TimeoutError, RayError, ValueError) as exc:  # slow, dead, or never created
                return exc

        found = await asyncio.gather(*[state(n) for n in names])
        out = {}
        for name, reply in zip(names, found):
            if isinstance(reply, (RayActorError, ValueError)):
                self.arbiter.quarantine(name, f"{name} is gone (its actor or node was lost)")
            out[name] = reply if isinstance(reply, dict) else {"error": _one_line(reply)}
        return out

    async def status(self) -> dict[str, Any]:
        states = await self._instrument_states()
        books = self.arbiter.snapshot()
        now = time.time()
        instruments = []
        for spec in self.lab.instruments:
            state, book = states.get(spec.name, {}), books[spec.name]
            busy_s = state.get("busy_s")
            served = now - state.get("served_at", self.started_at)
            instruments.append({
                "name": spec.name, "role": spec.role, "backend": spec.backend, "node_resource": spec.node_resource,
                "node_id": state.get("node_id"), "alive": "error" not in state,
                "busy_with": state.get("busy_with"), "queue": book["granted"],
                "waiting_for_role": book["waiting_for_role"], "steps_run": state.get("steps_run"),
                "busy_s": busy_s, "demand_s": book["demand_s"],
                "utilization": None if busy_s is None or served <= 0 else round(busy_s / served, 4),
                "utilization_while_queued": (None if busy_s is None or not book["demand_s"]
                                             else round(min(1.0, busy_s / book["demand_s"]), 4)),
                "quarantined": book["quarantined"], "quarantine_reason": book["quarantine_reason"],
                "campaigns": state.get("campaigns", [])})
        return {"lab": self.lab.lab, "namespace": self.lab.namespace, "policy": self.lab.scheduler,
                "served_since": self.started_at, "campaigns": [
                    {"campaign_id": c, **info, "steps_granted": {
                        role: n for (camp, role), n in self.arbiter.served.items() if camp == c}}
                    for c, info in self.joined.items()],
                "instruments": instruments}


def _one_line(exc: BaseException) -> str:
    from athanor.runtime import error_line

    return error_line(exc)
