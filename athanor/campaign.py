"""Starting, resuming and addressing a campaign stored in a run folder.

A run folder holds `run.json` (which campaign, in which store), the store itself when it is the
default SQLite file, and the outputs. Everything else about the campaign lives in the store.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any, Callable

from athanor.errors import AthanorError
from athanor.report import write_outputs
from athanor.spec import ApprovalSpec, Budget, Campaign, load_campaign
from athanor.store import Store

RUN_FILE = "run.json"


def open_run(out: str | Path) -> tuple[Store, Campaign]:
    """The store and spec of the campaign kept in a run folder."""
    out = Path(out)
    info_path = out / RUN_FILE
    if not info_path.is_file():
        raise AthanorError(f"{out}: no campaign here (no {RUN_FILE}); start one with 'athanor run CONFIG --out {out}'")
    info = json.loads(info_path.read_text())
    store = Store(info["store_url"], info["campaign_id"])
    spec = store.campaign_spec()
    if spec is None:
        raise AthanorError(f"{out}: the store at {info['store_url']} holds no campaign {info['campaign_id']}")
    return store, Campaign.model_validate(spec)


def _with_overrides(spec: Campaign, seed: int | None, max_experiments: int | None, approval: str | None,
                    ray_address: str | None) -> Campaign:
    update: dict[str, Any] = {}
    if seed is not None:
        update["seed"] = seed
    if max_experiments is not None:
        if max_experiments < 1:
            raise AthanorError(f"--max-experiments must be at least 1, got {max_experiments}")
        update["budget"] = Budget(experiments=max_experiments, wall_time_s=spec.budget.wall_time_s)
    if approval is not None:
        update["approval"] = ApprovalSpec(policy=approval)
    if ray_address is not None:
        update["ray_address"] = ray_address
    return spec.model_copy(update=update)


def prepare(config: str | Path, out: str | Path, resume: bool = False, seed: int | None = None,
            max_experiments: int | None = None, approval: str | None = None,
            ray_address: str | None = None) -> tuple[Store, Campaign]:
    """Create (or reopen, to resume) the stored campaign; nothing runs yet."""
    out = Path(out)
    if resume:
        store, stored = open_run(out)
        named = load_campaign(config).campaign
        if named != stored.campaign:
            raise AthanorError(f"{out} holds campaign {stored.campaign!r}, not {named!r} from {config}")
        if seed is not None and seed != stored.seed:
            raise AthanorError(f"--seed {seed} differs from the stored campaign's seed {stored.seed}")
        spec = _with_overrides(stored, None, max_experiments, approval, ray_address)
        store.register_campaign(spec.campaign, spec.model_dump(mode="json"), replace=True)
        store.rebuild()
        return store, spec
    if (out / RUN_FILE).exists():
        raise AthanorError(f"{out} already holds a campaign: pass --resume to continue it, or choose another --out")
    spec = _with_overrides(load_campaign(config), seed, max_experiments, approval, ray_address)
    out.mkdir(parents=True, exist_ok=True)
    campaign_id = f"{spec.campaign}-{uuid.uuid4().hex[:8]}"
    url = spec.store_url or f"sqlite:///{(out / 'campaign.db').resolve()}"
    store = Store(url, campaign_id)
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    (out / RUN_FILE).write_text(json.dumps({"campaign_id": campaign_id, "store_url": url,
                                            "config": str(Path(config).resolve())}, indent=2) + "\n")
    return store, spec


def execute(store: Store, spec: Campaign, out: str | Path,
            on_progress: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    """Run the campaign to its end on Ray and write the run folder's outputs."""
    import ray

    from athanor.conductor import Conductor
    from athanor.runtime import connect, start_agents, stop_agents

    started_ray = connect(spec.ray_address)
    agents = start_agents(spec, store.campaign_id)
    conductor = Conductor(spec, store, agents, previous_wall_s=store.wall_time_s(), on_progress=on_progress)
    try:
        status = asyncio.run(conductor.run())
    finally:
        stop_agents(agents)
        if started_ray:
            ray.shutdown()
    return write_outputs(store, spec, Path(out), status)
