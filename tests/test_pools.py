"""Instrument pools: every step goes to exactly one free instrument of its role, all of them get used;
an instrument that keeps being lost is taken out of service, shown in `athanor status`, and put back
by an operator's `athanor restore`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from athanor.cli import main
from athanor.commands import OperatorCommand, control, problems
from athanor.conductor import Conductor
from athanor.recovery import quarantined
from athanor.runtime import InProcess, local_agents
from athanor.spec import load_campaign
from athanor.store import Store
from conftest import ROOT

POOL = [{"name": "box1", "role": "synthesis"}, {"name": "box2", "role": "synthesis"},
        {"name": "box3", "role": "synthesis"}, {"name": "meter1", "role": "characterization"},
        {"name": "meter2", "role": "characterization"}]


def campaign(tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "alloy_slater_pauling.yaml").read_text())
    data["world"].update(failure_rate=0.0, latency_s=0.0)
    data.update({"campaign": "pool", "instruments": POOL, "batch_size": 5, "budget": {"experiments": 10}, **changes})
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def stored(tmp_path: Path, path: Path) -> tuple[Any, Store]:
    spec = load_campaign(path)
    store = Store(f"sqlite:///{tmp_path}/campaign.db", "pool-1")
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    (tmp_path / "run.json").write_text(json.dumps({"campaign_id": store.campaign_id, "store_url": store.url}))
    return spec, store


def runs_of(store: Store, sample_id: str, step: str) -> list[dict[str, Any]]:
    return [d for n, d in store.step_documents(f"{store.campaign_id}:{sample_id}:{step}") if n == "start"]


def test_every_step_is_done_by_exactly_one_instrument_of_its_role_and_all_are_used(tmp_path):
    spec, store = stored(tmp_path, campaign(tmp_path))
    assert asyncio.run(Conductor(spec, store, local_agents(spec, store.campaign_id, store.url)).run()) == "completed"
    samples = store.samples()
    assert len(samples) == 10 and {s["state"] for s in samples} == {"learned"}
    used: dict[str, set[str]] = {"synthesize": set(), "characterize": set()}
    for s in samples:
        for step, names in (("synthesize", {"box1", "box2", "box3"}), ("characterize", {"meter1", "meter2"})):
            (run,) = runs_of(store, s["id"], step)  # exactly one run per step
            assert run["instrument"] in names
            used[step].add(run["instrument"])
    assert used == {"synthesize": {"box1", "box2", "box3"}, "characterize": {"meter1", "meter2"}}
    measured_by = {m.sample_id: m.instrument for m in store.events(kind="measurement")}
    assert measured_by == {s["id"]: runs_of(store, s["id"], "characterize")[0]["instrument"] for s in samples}


class Unanswering:
    """box2's controller never answers: every step it is given comes back unavailable."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, request: dict[str, Any], key: str) -> dict[str, Any]:
        self.calls += 1
        return {"documents": [], "message": None, "unavailable": "test:box2:synthesizer:acquire does not answer",
                "duration_s": 0.0}


def test_a_lost_instrument_is_quarantined_shown_in_status_and_restored_by_an_operator(tmp_path, capsys):
    path = campaign(tmp_path, instruments=[{"name": "box1", "role": "synthesis"},
                                           {"name": "box2", "role": "synthesis", "quarantine_after": 2},
                                           {"name": "meter1", "role": "characterization"}])
    spec, store = stored(tmp_path, path)
    agents = local_agents(spec, store.campaign_id, store.url)
    dead = Unanswering()
    agents.instruments["box2"] = InProcess(dead)
    conductor = Conductor(spec, store, agents)
    assert asyncio.run(conductor.run()) == "completed"
    assert {s["state"] for s in store.samples()} == {"learned"}  # box1 made every sample
    assert dead.calls == 2 and conductor.quarantined.keys() == {"box2"}
    events = store.events(kind="campaign_event")
    assert quarantined(events) == {"box2": "2 steps lost in a row; last: test:box2:synthesizer:acquire does not answer"}

    assert main(["status", str(tmp_path)]) == 0
    assert "out of service: box2 (2 steps lost in a row" in capsys.readouterr().out
    assert main(["status", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quarantined"].keys() == {"box2"}

    assert main(["restore", str(tmp_path), "box7", "--user", "ada"]) == 2  # no such instrument: refused at once
    assert "no instrument 'box7'" in capsys.readouterr().err
    control(store, spec, "restore", "ada", instrument="box2")
    resumed = Conductor(spec, store, agents)
    asyncio.run(resumed.run())
    assert resumed.quarantined == {}
    restored = [e for e in store.events(kind="campaign_event") if e.event == "instrument_restored"]
    assert [(e.detail["instrument"], e.detail["by"]) for e in restored] == [("box2", "ada")]
    assert quarantined(store.events(kind="campaign_event")) == {}


@pytest.mark.parametrize("fields, problem", [
    ({"action": "restore"}, "no instrument None"),
    ({"action": "restore", "instrument": "box1 "}, "no instrument 'box1 '"),
    ({"action": "pause", "instrument": "box1"}, "instrument does not go with pause"),
])
def test_a_restore_names_an_instrument_of_the_campaign_and_nothing_else_does(tmp_path, fields, problem):
    spec, _ = stored(tmp_path, campaign(tmp_path))
    found = problems(OperatorCommand(user="ada", **fields), [], spec)
    assert any(problem in p for p in found), found


def test_the_readme_s_instrument_plug_in_runs_a_campaign(tmp_path, monkeypatch):
    """The README's example station, registered as a lab's entry point would be, makes every sample."""
    import re
    import sys
    import types

    from athanor import registry

    code = re.search(r"```python\n(import json.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    module = types.ModuleType("mylab_coater")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "mylab_coater", module)
    monkeypatch.setitem(registry.BUILTIN["athanor.instruments"], "spin_coater", "mylab_coater:SpinCoaterStation")
    path = campaign(tmp_path, instruments=[{"name": "coater1", "role": "synthesis", "kind": "spin_coater"},
                                           {"name": "meter1", "role": "characterization"}])
    spec, store = stored(tmp_path, path)
    registry.check_plugins(spec)
    assert asyncio.run(Conductor(spec, store, local_agents(spec, store.campaign_id, store.url)).run()) == "completed"
    results = store.events(kind="synthesis_result")
    assert len(results) == 10 and all(r.instrument == "coater1" and r.product["rpm"] == 3000.0 for r in results)
    start = runs_of(store, "S0001", "synthesize")[0]
    assert start["plan_name"] == "spin_coat"
