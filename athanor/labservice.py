"""Serving a lab on a Ray cluster, reading its state, and borrowing it for a campaign.

`athanor lab serve LAB.yaml` creates the lab's scheduler (on the node it runs on) and one actor per
instrument (on the node offering its `node_resource`), detached and named in the lab's namespace, so
that they outlive any one campaign and a crash of the serving process; stopping the serve process
(Ctrl-C, SIGTERM) takes the lab down. Serving a lab that is already up adopts it.

A campaign whose file names `lab: NAME` joins the lab's scheduler (`joined`), which builds the
campaign's station on every instrument; the campaign runs with the lab's instruments as its own
and gives them back when it ends, or, if its driver dies, when the scheduler sees it gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, Callable, Iterator

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from athanor.agents.lab import CampaignPresence, LabInstrument, LabScheduler
from athanor.dispatch import LabDispatch
from athanor.errors import AthanorError
from athanor.lab import NAMESPACE_PREFIX, SCHEDULER, Lab, LabInstrumentSpec, actor_name, namespace
from athanor.runtime import error_line
from athanor.spec import Campaign

START_TIMEOUT_S = 120.0
PIN = 0.001  # of a node's custom resource: enough to pin an actor there, not enough to crowd others out


def _detached(name: str, lab: Lab, **options: Any) -> dict[str, Any]:
    return {"name": name, "namespace": lab.namespace, "lifetime": "detached", "get_if_exists": True,
            "num_cpus": 0, "max_restarts": 0, **options}


def create(lab: Lab) -> dict[str, Any]:
    """Start the lab's actors (or find them, if the lab is already served); its status."""
    offered = ray.cluster_resources()
    for instrument in lab.instruments:
        if instrument.node_resource and instrument.node_resource not in offered:
            raise AthanorError(
                f"instrument {instrument.name!r} needs a node offering the resource {instrument.node_resource!r}, "
                f"and no node of this cluster does (start one with `ray start --address ... --resources "
                f"'{{\"{instrument.node_resource}\": 1}}'`)")
    wire = lab.model_dump(mode="json")
    here = ray.get_runtime_context().get_node_id()
    scheduler = ray.remote(LabScheduler).options(**_detached(
        SCHEDULER, lab, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))).remote(wire)
    channel_access = {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}
    instruments = [
        ray.remote(LabInstrument).options(**_detached(
            actor_name(i.name), lab, max_concurrency=4,
            resources={i.node_resource: PIN} if i.node_resource else {})).remote(wire, i.name, channel_access)
        for i in lab.instruments]
    try:
        ray.get([scheduler.ping.remote(), *[h.state.remote() for h in instruments]], timeout=START_TIMEOUT_S)
    except RayError as exc:
        raise AthanorError(f"lab {lab.lab!r} did not start: {error_line(exc)}") from None
    return ray.get(scheduler.status.remote())


def stop(name: str) -> int:
    """Kill every actor of the lab; how many there were."""
    killed = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == namespace(name):
            with contextlib.suppress(RayError, ValueError):
                ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]))
                killed += 1
    return killed


def serve(lab: Lab, on_ready: Callable[[dict[str, Any]], None]) -> None:
    """Serve the lab until this process is interrupted or terminated."""
    def terminate(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        on_ready(create(lab))
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(lab.lab)


def labs() -> list[str]:
    """The labs served on this cluster."""
    return sorted(entry["namespace"].removeprefix(NAMESPACE_PREFIX)
                  for entry in ray.util.list_named_actors(all_namespaces=True)
                  if entry["name"] == SCHEDULER and entry["namespace"].startswith(NAMESPACE_PREFIX))


def scheduler_of(name: str) -> Any:
    try:
        return ray.get_actor(SCHEDULER, namespace=namespace(name))
    except ValueError:
        served = labs()
        raise AthanorError(f"no lab {name!r} is served on this Ray cluster "
                           f"({'labs here: ' + ', '.join(served) if served else 'no lab is'}); start it with "
                           f"`athanor lab serve LAB.yaml --ray-address ADDRESS`") from None


def status(name: str | None = None) -> dict[str, Any]:
    """Every instrument of the named lab (or of every lab on the cluster), with its lab's name."""
    names = [name] if name else labs()
    reports = []
    for lab in names:
        try:
            reports.append(ray.get(scheduler_of(lab).status.remote(), timeout=60))
        except RayError as exc:
            raise AthanorError(f"lab {lab!r} does not answer: {error_line(exc)}") from None
    return {"labs": [{k: v for k, v in r.items() if k != "instruments"} for r in reports],
            "instruments": [{"lab": r["lab"], **i} for r in reports for i in r["instruments"]]}


@contextlib.contextmanager
def joined(spec: Campaign, campaign_id: str, store_url: str | None) -> Iterator[tuple[Campaign, LabDispatch, dict]]:
    """Borrow the lab the campaign names: the campaign with the lab's instruments as its own, the
    dispatch that runs its steps on them, and where each instrument runs. Given back on leaving."""
    scheduler = scheduler_of(spec.lab)
    wire = resolved_wire(spec, None)
    presences: list[Any] = []

    def join() -> Any:
        # The presence runs on the driver's node and dies with the driver: then the lab takes it back.
        here = ray.get_runtime_context().get_node_id()
        presences.append(ray.remote(CampaignPresence).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote())
        return scheduler.join.remote(campaign_id, spec.lab_priority, presences[-1], wire, store_url)

    async def rejoin() -> None:
        reply = await join()
        if "error" in reply:
            raise AthanorError(f"lab {spec.lab!r} took campaign {spec.campaign!r} back: {reply['error']}")

    try:
        try:
            reply = ray.get(join(), timeout=START_TIMEOUT_S)
        except RayError as exc:
            raise AthanorError(f"cannot join lab {spec.lab!r}: {error_line(exc)}") from None
        if "error" in reply:
            raise AthanorError(f"lab {spec.lab!r} cannot run campaign {spec.campaign!r}: {reply['error']}")
        resolved = Campaign.model_validate(resolved_wire(spec, reply["instruments"]))
        try:
            yield resolved, LabDispatch(scheduler, campaign_id, rejoin), reply
        finally:
            with contextlib.suppress(RayError):
                ray.get(scheduler.leave.remote(campaign_id), timeout=30)
    finally:
        for presence in presences:
            with contextlib.suppress(RayError):
                ray.kill(presence)


def resolved_wire(spec: Campaign, instruments: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The campaign as its agents see it on a lab: the lab's instruments are its instruments (before
    the lab has answered, `instruments` None, the scheduler fills them in)."""
    wire = spec.model_dump(mode="json")
    wire["lab"] = None
    if instruments is not None:
        wire["instruments"] = [LabInstrumentSpec.model_validate(i).for_campaign().model_dump(mode="json")
                               for i in instruments]
    return wire
