"""Campaigns for a lab's own tests: a campaign file on a simulated world, run in this process.

`run_in_process` runs the conductor with its agents as plain objects (no Ray): the conductor, the
agents, the instruments' plans and the store are the real ones, only the actor transport is left out,
so a test takes seconds. `athanor dry-run` runs the same campaign on Ray, as `athanor run` does.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from athanor.errors import AthanorError
from athanor.spec import Campaign
from athanor.store import Store

# A small campaign that needs no data file: the rigid-band alloy world, computed on the spot.
DEFAULT_CAMPAIGN: dict[str, Any] = {
    "campaign": "kit_campaign",
    "seed": 0,
    "space": {"composition": {"elements": {"Fe": [0.2, 0.9], "Co": [0.0, 0.5], "Ni": [0.0, 0.5]}}},
    "objectives": [{"name": "magnetic_moment", "direction": "maximize"}],
    "budget": {"experiments": 4},
    "batch_size": 2,
    "designer": {"strategy": "sobol"},
    "world": {"kind": "alloy", "noise": 0.01},
    "approval": {"policy": "auto"},
}

Operator = Callable[[dict[str, Any]], "bool | None"]  # a waiting sample -> approve, reject, or leave it


def approve_all(sample: dict[str, Any]) -> bool:
    """The scripted operator of dry runs: approves every proposal and every interrupted step's retry."""
    return True


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with each override laid over its section: the fields an override gives replace the
    section's (one level deep: `space={"composition": {...}}` replaces the whole composition, and
    `world={"failure_rate": 0.2}` keeps the world's kind); a section given as a list or value replaces it."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        section = out.get(key)
        out[key] = {**section, **copy.deepcopy(value)} if isinstance(value, dict) and isinstance(section, dict) \
            else copy.deepcopy(value)
    return out


def campaign_file(path: str | Path, base: str | Path | dict[str, Any] | None = None, **overrides: Any) -> Path:
    """Write a campaign file: `base` (a campaign file, a mapping, or a small alloy campaign when None)
    with `overrides` laid over its sections (see `merged`), e.g. `budget={"experiments": 6},
    world={"failure_rate": 0.2}`."""
    if base is None:
        data = DEFAULT_CAMPAIGN
    elif isinstance(base, dict):
        data = base
    else:  # read as Athanor reads it, so its relative paths (a pool's dataset) hold from anywhere
        from athanor.spec import load_campaign

        data = load_campaign(base, check_plugins=False).model_dump(mode="json")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merged(data, overrides), sort_keys=False))
    return path


def answer_operator(store: Store, spec: Campaign, operator: Operator, user: str) -> list[str]:
    """Post the operator's decision on every sample that waits for one (a proposal the policy asks
    about, or an interrupted step) and has none in the inbox yet; the samples answered now."""
    from athanor.commands import decide, posted_decisions

    posted = posted_decisions(store)
    now = []
    for s in store.samples():
        if not s["awaiting_approval"] or s["id"] in posted:
            continue
        verdict = operator(s)
        if verdict is None:
            continue
        try:
            decide(store, spec, [s["id"]], bool(verdict), user,
                   "" if verdict else "rejected by the scripted operator of a test")
        except AthanorError:  # settled meanwhile (a timeout's default): nothing waits any more
            continue
        now.append(s["id"])
    return now


@dataclass
class InProcessRun:
    store: Store
    spec: Campaign
    out: Path
    status: str
    summary: dict[str, Any]
    answered: list[str]  # samples the scripted operator decided on

    def samples(self) -> list[dict[str, Any]]:
        return self.store.samples()


def run_in_process(config: str | Path, out: str | Path, *, seed: int | None = None,
                   max_experiments: int | None = None, approval: str | None = None,
                   wrap_world: Callable[[Any], Any] | None = None, operator: Operator | None = approve_all,
                   user: str = "test-operator", timeout_s: float = 300.0) -> InProcessRun:
    """Run a campaign to its end in this process and write its outputs. `wrap_world` wraps each
    instrument's world (a `FaultyWorld`); `operator` answers what waits for an operator (None: nobody
    does, and a campaign that asks never ends: `timeout_s` then raises TimeoutError)."""
    from athanor.campaign import prepare
    from athanor.conductor import Conductor
    from athanor.report import write_outputs
    from athanor.runtime import local_agents

    out = Path(out)
    store, spec = prepare(config, out, seed=seed, max_experiments=max_experiments, approval=approval)
    answered: list[str] = []

    async def main() -> str:
        agents = local_agents(spec, store.campaign_id, store.url, wrap_world=wrap_world)
        task = asyncio.create_task(Conductor(spec, store, agents).run())
        while not task.done():
            if operator is not None:
                answered.extend(answer_operator(store, spec, operator, user))
            await asyncio.wait([task], timeout=0.1)
        return task.result()

    try:
        status = asyncio.run(asyncio.wait_for(main(), timeout_s))
        summary = write_outputs(store, spec, out, status)
    except BaseException:
        store.release_lease()
        store.close()
        raise
    store.release_lease()
    return InProcessRun(store, spec, out, status, summary, answered)
