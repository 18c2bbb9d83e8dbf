"""The lab scheduler's policy (athanor/scheduling.py) and the lab file, without Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from athanor.cli import main
from athanor.errors import SpecError
from athanor.lab import load_lab
from athanor.scheduling import Arbiter
from athanor.spec import load_campaign
from conftest import ROOT


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def granted(arbiter: Arbiter) -> list[tuple[str, str, str]]:
    return [(r.campaign, r.sample_id, g.instrument) for r, g in arbiter.assign()]


def test_fair_share_alternates_between_campaigns_whoever_asked_first():
    arbiter = Arbiter({"f1": "synthesis", "p1": "characterization"}, depth=1)
    arbiter.join("A")
    arbiter.join("B")
    for i in range(4):  # A asks for four steps before B asks for any
        arbiter.ask("A", "synthesis", f"A{i}")
    for i in range(2):
        arbiter.ask("B", "synthesis", f"B{i}")
    order = []
    while arbiter.waiting:
        ((campaign, sample, instrument),) = granted(arbiter)
        assert instrument == "f1"
        order.append(sample)
        grant = next(iter(arbiter.instruments["f1"].grants.values()))
        arbiter.start(grant.id)
        assert granted(arbiter) == []  # one instrument, depth 1: nothing more until the step ends
        arbiter.finish(grant.id)
    assert order == ["A0", "B0", "A1", "B1", "A2", "A3"]


def test_priority_serves_the_higher_priority_campaign_first_and_shares_among_equals():
    arbiter = Arbiter({"f1": "synthesis", "p1": "characterization"}, policy="priority", depth=1)
    for name, priority in (("low", 0), ("high", 5), ("high2", 5)):
        arbiter.join(name, priority)
    for name in ("low", "high", "high2"):
        for i in range(2):
            arbiter.ask(name, "synthesis", f"{name}-{i}")
    order = []
    while arbiter.waiting:
        ((_, sample, _),) = granted(arbiter)
        order.append(sample)
        arbiter.finish(next(iter(arbiter.instruments["f1"].grants)))
    assert order == ["high-0", "high2-0", "high-1", "high2-1", "low-0", "low-1"]


def test_an_instrument_holds_at_most_depth_steps_and_idle_instruments_are_filled_first():
    arbiter = Arbiter({"f1": "synthesis", "f2": "synthesis", "p1": "characterization"}, depth=2)
    arbiter.join("A")
    for i in range(5):
        arbiter.ask("A", "synthesis", f"S{i}")
    made = granted(arbiter)
    assert [m[2] for m in made] == ["f1", "f2", "f1", "f2"]  # both busy before either takes a second step
    assert len(arbiter.waiting) == 1 and granted(arbiter) == []
    assert all(len(s.grants) <= 2 for s in arbiter.instruments.values())


def test_a_quarantined_instrument_gets_nothing_until_restored():
    arbiter = Arbiter({"f1": "synthesis", "f2": "synthesis", "p1": "characterization"}, depth=1)
    arbiter.join("A")
    arbiter.quarantine("f1", "its node was lost")
    arbiter.ask("A", "synthesis", "S1")
    arbiter.ask("A", "synthesis", "S2")
    assert [m[2] for m in granted(arbiter)] == ["f2"]
    arbiter.restore("f1")
    assert [m[2] for m in granted(arbiter)] == ["f1"]


def test_a_campaign_that_leaves_gives_back_unused_grants_and_waiting_requests_but_not_running_steps():
    arbiter = Arbiter({"f1": "synthesis", "p1": "characterization"}, depth=2)
    arbiter.join("A")
    arbiter.join("B")
    arbiter.ask("A", "synthesis", "A0")
    arbiter.ask("A", "synthesis", "A1")
    arbiter.ask("A", "synthesis", "A2")
    made = arbiter.assign()
    running = made[0][1]
    arbiter.start(running.id)
    dropped, unused = arbiter.leave("A")
    assert [r.sample_id for r in dropped] == ["A2"] and [g.sample_id for g in unused] == ["A1"]
    assert list(arbiter.instruments["f1"].grants) == [running.id]  # the step under way finishes on its own
    arbiter.ask("B", "synthesis", "B0")
    assert granted(arbiter) == [("B", "B0", "f1")]  # the freed place goes to B at once
    with pytest.raises(KeyError, match="has not joined"):
        arbiter.ask("A", "synthesis", "A3")
    with pytest.raises(KeyError, match="no furnace"):
        arbiter.ask("B", "furnace", "B1")


def test_demand_counts_time_with_work_queued_and_not_idle_time():
    clock = Clock()
    arbiter = Arbiter({"f1": "synthesis", "p1": "characterization"}, depth=1, clock=clock)
    arbiter.join("A")
    clock.now += 50  # nothing asked: no demand
    arbiter.ask("A", "synthesis", "S0")
    arbiter.ask("A", "synthesis", "S1")
    (request, grant), = arbiter.assign()
    arbiter.start(grant.id)
    clock.now += 2
    arbiter.finish(grant.id)
    arbiter.assign()
    clock.now += 3
    snapshot = arbiter.snapshot()
    assert snapshot["f1"]["demand_s"] == pytest.approx(5.0)
    assert snapshot["p1"]["demand_s"] == 0.0
    assert snapshot["f1"]["steps_granted"] == 2 and snapshot["f1"]["waiting_for_role"] == 0


def write_lab(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    return path


def test_the_demo_lab_pins_a_furnace_to_the_furnace_host_and_the_campaign_names_it():
    lab = load_lab(ROOT / "configs" / "lab_demo.yaml")
    assert {i.role for i in lab.instruments} == {"synthesis", "characterization"}
    assert any(i.node_resource == "furnace_host" for i in lab.instruments)
    assert lab.namespace == "athanor-lab-lab_demo"
    assert load_campaign(ROOT / "configs" / "p3ht_lab.yaml").lab == lab.lab


@pytest.mark.parametrize("body, expected", [
    ("lab: x\ninstruments:\n  - {name: f, role: synthesis}\n  - {name: f, role: characterization}\n",
     "f named twice"),
    ("lab: x\ninstruments:\n  - {name: f, role: synthesis}\n", "no characterization instrument"),
    ("lab: x\ninstruments:\n  - {name: f, role: synthesis, node: a}\n  - {name: p, role: characterization}\n",
     "lab.yaml:3: instruments.0.node: unknown key 'node'"),
    ("lab: x\nscheduler: lottery\ninstruments: []\n", "lab.yaml:2: scheduler"),
    ("lab: 'x y'\ninstruments:\n  - {name: f, role: synthesis, node_resource: 'a b'}\n", "node_resource"),
    ("- just\n- a list\n", "must be a mapping"),
    ("lab: [unclosed\n", "malformed YAML"),
])
def test_a_bad_lab_file_is_one_clear_message_naming_the_place(tmp_path, capsys, body, expected):
    path = write_lab(tmp_path, body)
    with pytest.raises(SpecError) as caught:
        load_lab(path)
    assert expected in str(caught.value)
    assert main(["lab", "serve", str(path)]) == 2  # the same problem, before any Ray starts
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    if body.startswith("lab:"):  # `athanor validate` knows a lab file from a campaign file
        assert main(["validate", str(path)]) == 2
        assert expected in capsys.readouterr().err


def test_a_campaign_cannot_name_a_lab_and_instruments_of_its_own(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "p3ht_lab.yaml").read_text())
    data["space"]["pool"]["dataset"] = str(ROOT / "data" / "liang2021" / "P3HT.csv")
    data["instruments"] = [{"name": "f", "role": "synthesis"}, {"name": "p", "role": "characterization"}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="borrows the lab's instruments"):
        load_campaign(path)


def test_running_a_lab_campaign_without_a_cluster_address_says_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = main(["run", str(ROOT / "configs" / "p3ht_lab.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "pass --ray-address" in err and "lab_demo" in err
    assert main(["lab", "status"]) == 2
    assert "needs --ray-address" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was created


class FakeScheduler:
    """The scheduler actor's calls as `.remote(...)` awaitables, answering from a script."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __getattr__(self, method):
        class Call:
            @staticmethod
            def remote(*args):
                self.calls.append((method, args))

                if method != "acquire":  # fire and forget, as an ObjectRef nobody awaits
                    return None

                async def answer():
                    return self.answers.pop(0)
                return answer()
        return Call


def test_a_campaign_the_lab_took_for_gone_joins_again_and_gets_its_instrument():
    import asyncio

    from athanor.dispatch import LabDispatch

    scheduler = FakeScheduler([{"error": "campaign 'c' has not joined the lab", "not_joined": True}, ["oven", 7]])
    rejoined = []

    async def rejoin():
        rejoined.append(True)

    async def step():
        async with LabDispatch(scheduler, "c", rejoin).slot("synthesis", "S1", "synthesize") as slot:
            return slot.name
    assert asyncio.run(step()) == "oven" and rejoined == [True]
    assert ("release", ("c", 7)) in scheduler.calls  # a grant not used to run is given back

    refused = FakeScheduler([{"error": "the lab has no furnace instrument", "not_joined": False}])

    async def no_such_role():
        async with LabDispatch(refused, "c", rejoin).slot("furnace"):
            pass
    with pytest.raises(Exception, match="the lab gave no furnace instrument: the lab has no furnace"):
        asyncio.run(no_such_role())
    assert rejoined == [True]  # not joined again: it had not been dropped
