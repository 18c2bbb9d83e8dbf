"""Starting, resuming and addressing a campaign stored in a run folder.

A run folder holds `run.json` (which campaign, in which store), the store itself when it is the
default SQLite file, and the outputs. Everything else about the campaign lives in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from athanor.errors import AthanorError
from athanor.messages import CampaignEvent
from athanor.report import write_outputs
from pydantic import ValidationError

from athanor.spec import Campaign, load_campaign
from athanor.store import Store

RUN_FILE = "run.json"


def open_run(out: str | Path) -> tuple[Store, Campaign]:
    """The store and spec of the campaign kept in a run folder."""
    out = Path(out)
    info_path = out / RUN_FILE
    if not info_path.is_file():
        raise AthanorError(f"{out}: no campaign here (no {RUN_FILE}); start one with 'athanor run CONFIG --out {out}'")
    try:
        info = json.loads(info_path.read_text())
        url, campaign_id = info["store_url"], info["campaign_id"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise AthanorError(f"{info_path}: unreadable ({type(exc).__name__}: {exc})") from None
    store = Store(url, campaign_id)
    spec = store.campaign_spec()
    if spec is None:
        raise AthanorError(f"{out}: the store at {store.safe_url} holds no campaign {campaign_id}")
    try:
        campaign = Campaign.model_validate(spec)
        store.retry_s = campaign.store_retry_s
        return store, campaign
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AthanorError(f"{out}: the stored campaign no longer validates: {where}: "
                           f"{first['msg'].removeprefix('Value error, ')}") from None


def _with_overrides(spec: Campaign, seed: int | None = None, max_experiments: int | None = None,
                    approval: str | None = None, ray_address: str | None = None,
                    wall_time_s: float | None = None) -> Campaign:
    """The spec with the command line's overrides, validated like the file itself."""
    data = spec.model_dump(mode="json")
    flags = {"--seed": (("seed",), seed), "--max-experiments": (("budget", "experiments"), max_experiments),
             "--wall-time": (("budget", "wall_time_s"), wall_time_s), "--approval": (("approval", "policy"), approval),
             "--ray-address": (("ray_address",), ray_address)}
    for path, value in flags.values():
        if value is not None:
            target = data
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
    try:
        return Campaign.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            flag = next((f for f, (path, _) in flags.items() if tuple(err["loc"]) == path), ".".join(map(str, err["loc"])))
            problems.append(f"{flag}: {err['msg']}")
        raise AthanorError("; ".join(problems)) from None


def prepare(config: str | Path, out: str | Path, resume: bool = False, seed: int | None = None,
            max_experiments: int | None = None, approval: str | None = None,
            ray_address: str | None = None, wall_time_s: float | None = None) -> tuple[Store, Campaign]:
    """Create (or reopen, to resume) the stored campaign; nothing runs yet."""
    out = Path(out)
    if resume:
        store, stored = open_run(out)
        previous = store.acquire_lease()  # before anything changes: a second conductor stops here
        try:
            if previous is not None:
                store.append(CampaignEvent(campaign_id=store.campaign_id, sender="conductor",
                                           event="lease_taken_over", detail=previous))
            named = load_campaign(config).campaign
            if named != stored.campaign:
                raise AthanorError(f"{out} holds campaign {stored.campaign!r}, not {named!r} from {config}")
            if seed is not None and seed != stored.seed:
                raise AthanorError(f"--seed {seed} differs from the stored campaign's seed {stored.seed}")
            spec = _with_overrides(stored, None, max_experiments, approval, ray_address, wall_time_s)
            store.register_campaign(spec.campaign, spec.model_dump(mode="json"), replace=True)
            store.rebuild()
        except BaseException:  # refused: let go at once (a notebook's process lives on, holding it otherwise)
            store.release_lease()
            store.close()
            raise
        return store, spec
    if (out / RUN_FILE).exists():
        raise AthanorError(f"{out} already holds a campaign: pass --resume to continue it, or choose another --out")
    spec = _with_overrides(load_campaign(config), seed, max_experiments, approval, ray_address, wall_time_s)
    _check_lab_address(spec)
    out.mkdir(parents=True, exist_ok=True)
    campaign_id = f"{spec.campaign}-{uuid.uuid4().hex[:8]}"
    url = spec.store_url or f"sqlite:///{(out / 'campaign.db').resolve()}"
    store = Store(url, campaign_id, retry_s=spec.store_retry_s)
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    store.acquire_lease()
    (out / RUN_FILE).write_text(json.dumps({"campaign_id": campaign_id, "store_url": url,
                                            "config": str(Path(config).resolve())}, indent=2) + "\n")
    return store, spec


def execute(store: Store, spec: Campaign, out: str | Path,
            on_progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, Any]:
    """Run the campaign to its end on Ray and write the run folder's outputs; the lease `prepare` took
    is released at the end (a crash leaves it to go stale)."""
    import ray

    from athanor.conductor import Conductor
    from athanor.runtime import connect, start_agents, stop_agents

    _check_lab_address(spec)
    try:
        started_ray = connect(spec.ray_address)
        try:
            with contextlib.ExitStack() as stack:
                dispatch = None
                if spec.lab is not None:
                    spec, dispatch = _on_lab(stack, spec, store)
                environment = stack.enter_context(channel_access(spec, Path(out)))
                agents = start_agents(spec, store.campaign_id, store.url, environment, dispatch)
                conductor = Conductor(spec, store, agents, previous_wall_s=store.wall_time_s(), on_progress=on_progress)
                try:
                    status = asyncio.run(conductor.run())
                finally:
                    stop_agents(agents)
        finally:
            if started_ray:
                ray.shutdown()
        return write_outputs(store, spec, Path(out), status)
    finally:
        store.release_lease()


def _check_lab_address(spec: Campaign) -> None:
    if spec.lab is not None and not (spec.ray_address or os.environ.get("RAY_ADDRESS")):
        raise AthanorError(f"campaign {spec.campaign!r} runs on lab {spec.lab!r}: pass --ray-address, the address "
                           "of the Ray cluster where `athanor lab serve` serves it")


def _on_lab(stack: contextlib.ExitStack, spec: Campaign, store: Store) -> tuple[Campaign, Any]:
    """Join the campaign's lab for the length of `stack`; the campaign with the lab's instruments."""
    from athanor.labservice import joined

    resolved, dispatch, reply = stack.enter_context(joined(spec, store.campaign_id, store.url))
    store.append(CampaignEvent(campaign_id=store.campaign_id, sender="conductor", event="lab_joined",
                               detail={"lab": spec.lab, "policy": reply["policy"], "nodes": reply["nodes"],
                                       "quarantined": reply["quarantined"]}))
    return resolved, dispatch


@contextlib.contextmanager
def channel_access(spec: Campaign, out: Path) -> Iterator[dict[str, str]]:
    """Where epics instruments find their IOC: this run's own (`ioc: embedded`, serving the campaign
    on a free loopback port for the run's length), or the one the EPICS_CA_* environment names."""
    if not any(i.backend == "epics" for i in spec.instruments):
        yield {}
        return
    if spec.ioc == "external":
        yield {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}
        return
    from athanor.ioc import embedded

    config = out / "ioc_campaign.json"  # JSON is YAML: `athanor ioc` reads it as a campaign file
    config.write_text(json.dumps(spec.model_dump(mode="json"), indent=1))
    with embedded(config, log=out / "ioc.log") as ioc:
        yield ioc.environment
