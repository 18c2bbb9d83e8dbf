"""The Ray runtime: joins (or starts) a cluster and starts the campaign's agents as actors."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from athanor.agents.characterizer import CharacterizerAgent
from athanor.agents.designer import DesignerAgent
from athanor.agents.instrument import InstrumentAgent
from athanor.agents.learner import LearnerAgent
from athanor.agents.planner import PlannerAgent
from athanor.errors import AthanorError
from athanor.spec import Campaign

# Actors wait on instruments and each other far more than they compute, so they take no CPU slot:
# all six fit on a 2-core machine. A crashed actor is restarted; its step is failed, not retried.
ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": 2, "max_task_retries": 0}


@dataclass
class Agents:
    designer: Any
    planner: Any
    characterizer: Any
    learner: Any
    instruments: dict[str, Any]  # instrument name -> its station's agent (none on a lab: see dispatch)
    dispatch: Any = None  # a lab's LabDispatch (athanor/dispatch.py); None: the instruments above

    def handles(self) -> list[Any]:
        return [self.designer, self.planner, self.characterizer, self.learner, *self.instruments.values()]


def connect(address: str | None = None) -> bool:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local one. True if this call started Ray."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    # "local", not None: left to itself Ray joins the last `ray start` cluster of this machine, even a stopped one.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise AthanorError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return True


def error_line(exc: BaseException) -> str:
    """The one line of a Ray error that says what went wrong."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    if isinstance(exc, RayActorError):
        return "the actor died" + (f": {exc.error_msg.splitlines()[0]}" if getattr(exc, "error_msg", "") else "")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def start_agents(spec: Campaign, campaign_id: str, store_url: str | None = None,
                 channel_access: dict[str, str] | None = None, dispatch: Any = None) -> Agents:
    """The campaign's agents as actors; instruments write their documents to the store at `store_url`
    and, over EPICS, find their IOC with `channel_access` (EPICS_CA_* variables). With a lab's
    `dispatch`, the campaign has no instrument actors of its own."""
    wire = spec.model_dump(mode="json")

    # Beside the driver where it can: a node that hosts a lab's instrument may be lost with it.
    beside = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)

    def actor(cls: type, *args: Any) -> Any:
        return ray.remote(cls).options(**ACTOR_OPTIONS, scheduling_strategy=beside).remote(wire, campaign_id, *args)

    agents = Agents(
        designer=actor(DesignerAgent), planner=actor(PlannerAgent), characterizer=actor(CharacterizerAgent),
        learner=actor(LearnerAgent),
        instruments={} if dispatch is not None else {
            i.name: actor(InstrumentAgent, i.name, store_url, channel_access) for i in spec.instruments},
        dispatch=dispatch)
    try:
        ray.get([h.ping.remote() for h in agents.handles()])
    except RayError as exc:
        stop_agents(agents)
        raise AthanorError(f"an agent failed to start: {error_line(exc)}") from None
    return agents


class InProcess:
    """An agent called in this process the way the conductor calls an actor: `handle.method.remote(*args)`
    gives an awaitable, and the arguments are copied as Ray would serialize them. For fast tests and
    dry runs of the conductor's logic; campaigns run their agents as actors."""

    def __init__(self, agent: Any):
        self.agent = agent

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.agent, name)

        class _Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                copied = copy.deepcopy(args)

                async def call() -> Any:
                    return method(*copied)
                return call()
        return _Method


def local_agents(spec: Campaign, campaign_id: str, store_url: str | None = None,
                 channel_access: dict[str, str] | None = None,
                 wrap_world: Callable[[Any], Any] | None = None) -> Agents:
    """The campaign's agents as plain objects in this process (see `InProcess`); `wrap_world` wraps each
    instrument's world (athanor.testing.FaultyWorld injects faults)."""
    wire = spec.model_dump(mode="json")
    return Agents(
        designer=InProcess(DesignerAgent(wire, campaign_id)), planner=InProcess(PlannerAgent(wire, campaign_id)),
        characterizer=InProcess(CharacterizerAgent(wire, campaign_id)), learner=InProcess(LearnerAgent(wire, campaign_id)),
        instruments={i.name: InProcess(InstrumentAgent(wire, campaign_id, i.name, store_url, channel_access, wrap_world))
                     for i in spec.instruments})


def stop_agents(agents: Agents) -> None:
    for handle in agents.handles():
        try:
            ray.kill(handle)
        except RayError:
            pass
