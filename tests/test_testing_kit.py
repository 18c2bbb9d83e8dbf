"""athanor.testing: the in-process runner, the fault-injecting world, and invariant checks that fail when
a store is tampered with the way a bug would leave it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ophyd.utils import LimitError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from athanor.errors import AthanorError
from athanor.instruments.devices import epics_device, soft_device
from athanor.instruments.hardware import Furnace
from athanor.simulators.alloy import AlloyWorld
from athanor.spec import load_campaign
from athanor.messages import StepIntent, StepInterrupted
from athanor.tables import DocumentRow, EventRow
from athanor.testing import (
    FaultyWorld,
    InvariantViolation,
    assert_invariants,
    campaign_file,
    check_campaign,
    run_in_process,
)
from conftest import ROOT


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A small alloy campaign run to its end in process, S0002's synthesis faulted by the kit's world."""
    tmp = tmp_path_factory.mktemp("kit")
    config = campaign_file(tmp / "c.yaml", budget={"experiments": 4})
    worlds = []

    def wrap(world):
        worlds.append(FaultyWorld(world, fail={"S0002:synthesis"}))
        return worlds[-1]

    run = run_in_process(config, tmp / "run", wrap_world=wrap)
    return run, worlds


def failing(run, **kwargs) -> dict[str, list[str]]:
    return {c.name: c.violations for c in check_campaign(run.store, run.spec, run.out, **kwargs) if not c.passed}


def test_the_in_process_run_keeps_every_promise_and_the_fault_fails_one_sample(finished):
    run, worlds = finished
    assert run.status == "completed"
    assert {s["id"]: s["state"] for s in run.samples()} == {
        "S0001": "learned", "S0002": "failed", "S0003": "learned", "S0004": "learned"}
    calls = sum((w.calls for w in worlds), start=type(worlds[0].calls)())
    assert calls["S0002:synthesis"] == 1 and "S0002:characterization" not in calls
    assert set(calls.values()) == {1}
    assert_invariants(run.store, run.spec, run.out)
    assert json.loads((run.out / "summary.json").read_text())["n_failed"] == 1


def test_each_check_fails_on_the_damage_it_guards_against(finished, tmp_path):
    run, _ = finished
    engine, cid = run.store.engine, run.store.campaign_id
    with Session(engine) as s, s.begin():  # a second run under S0003's synthesis key
        start = s.scalar(select(DocumentRow).where(DocumentRow.campaign_id == cid, DocumentRow.sample_id == "S0003",
                                                   DocumentRow.name == "start", DocumentRow.step == "synthesize"))
        key = start.idempotency_key
        s.add(DocumentRow(campaign_id=cid, sample_id="S0003", event_id="", run_uid="x" * 32, name="start",
                          body={**start.body, "uid": "x" * 32}, idempotency_key=key, step="synthesize"))
    assert failing(run)["steps_exactly_once"] == [f"{key}: 2 runs started under one key"]
    # the copy lacks nothing event-model needs; a start without a time does
    with Session(engine) as s, s.begin():
        row = s.scalar(select(DocumentRow).where(DocumentRow.run_uid == "x" * 32))
        row.body = {k: v for k, v in row.body.items() if k != "time"}
    assert "'time' is a required property" in failing(run)["documents_valid"][0]
    with Session(engine) as s, s.begin():
        s.execute(delete(DocumentRow).where(DocumentRow.run_uid == "x" * 32))
    assert failing(run) == {}

    # a measurement that changed (or vanished) since a crash
    before = {"S0001": {"magnetic_moment": 99.0}}
    assert failing(run, measured_before=[before])["no_sample_lost"][0].startswith(
        "S0001: measured {'magnetic_moment': 99.0} before a crash")
    # an instrument step for a sample nobody approved
    with Session(engine) as s, s.begin():
        decision = s.execute(select(EventRow.seq, EventRow.body).where(
            EventRow.campaign_id == cid, EventRow.kind == "approval_decision", EventRow.sample_id == "S0004")).first()
        s.execute(update(EventRow).where(EventRow.seq == decision.seq).values(body={**decision.body, "approved": False}))
    judged = failing(run)["proposals_judged_before_instruments"]
    assert judged[0].startswith("S0004: synthesize began") and judged[-1] == "S0004: rejected, yet an instrument ran for it"
    # a message the protocol does not know
    with Session(engine) as s, s.begin():
        s.execute(update(EventRow).where(EventRow.seq == decision.seq).values(body={**decision.body, "approved": "perhaps"}))
    assert "approved: Input should be a valid boolean" in failing(run)["messages_valid"][0]
    with Session(engine) as s, s.begin():
        s.execute(update(EventRow).where(EventRow.seq == decision.seq).values(body=decision.body))
    # outputs that disagree with the store
    results = run.out / "results.csv"
    kept = results.read_text()
    results.write_text(kept.splitlines()[0] + "\n")
    assert failing(run)["outputs_written"] == ["results.csv has 0 rows, the store 4 samples"]
    results.unlink()
    with pytest.raises(InvariantViolation, match="outputs_written: .*results.csv is missing"):
        assert_invariants(run.store, run.spec, run.out)
    results.write_text(kept)
    assert failing(run) == {}


def test_a_retry_needs_an_interruption_and_an_operator_and_the_log_an_end(finished):
    run, _ = finished
    store, cid = run.store, run.store.campaign_id
    env = {"campaign_id": cid, "sample_id": "S0004", "sender": "conductor"}
    key = f"{cid}:S0004:synthesize"
    appended = [StepIntent(**env, step="synthesize", idempotency_key=f"{key}:2", target="synthesizer", attempt=2)]
    store.append(appended[0])
    try:
        assert failing(run)["steps_exactly_once"] == [
            f"{key}:2: attempt 2 began, but {key} was never judged interrupted"]
        appended.append(StepInterrupted(**env, step="synthesize", idempotency_key=key, action="ask", reason="test"))
        store.append(appended[-1])  # logged after the retry's intent: still no operator approved a new run
        appended.append(StepIntent(**env, step="synthesize", idempotency_key=f"{key}:2", target="synthesizer", attempt=2))
        store.append(appended[-1])
        found = failing(run)
        assert "steps_exactly_once" not in found
        assert found["proposals_judged_before_instruments"][-1].endswith("before it was approved (after its interruption)")
        with Session(store.engine) as s, s.begin():  # and without its end
            s.execute(delete(EventRow).where(EventRow.campaign_id == cid, EventRow.kind == "campaign_event"))
        assert failing(run)["campaign_finished"] == ["the log holds no 'ended' event: the campaign never finished"]
        smaller = run.spec.model_copy(update={"budget": run.spec.budget.model_copy(update={"experiments": 3})})
        [budget] = [c for c in check_campaign(store, smaller) if c.name == "budget_respected"]
        assert budget.violations == ["4 experiments run, budget 3"]
    finally:
        with Session(store.engine) as s, s.begin():
            s.execute(delete(EventRow).where(EventRow.id.in_([m.id for m in appended])))
        store.rebuild()


def test_a_policy_that_asks_is_answered_by_the_scripted_operator_or_waits(tmp_path):
    config = campaign_file(tmp_path / "c.yaml", approval={"policy": "always"}, budget={"experiments": 2})
    run = run_in_process(config, tmp_path / "run", user="ada")
    assert run.status == "completed" and sorted(run.answered) == ["S0001", "S0002"]
    assert [a["decided_by"] for a in run.store.approvals()] == ["ada", "ada"]
    assert_invariants(run.store, run.spec, run.out)
    with pytest.raises(TimeoutError):  # nobody answers: the campaign waits, as it would for a person
        run_in_process(config, tmp_path / "waiting", operator=None, timeout_s=3)
    rejected = run_in_process(config, tmp_path / "rejected", operator=lambda s: s["id"] != "S0001")
    assert rejected.store.sample("S0001")["state"] == "rejected"
    assert_invariants(rejected.store, rejected.spec, rejected.out)


def test_campaign_file_merges_overrides_into_a_base(tmp_path):
    path = campaign_file(tmp_path / "c.yaml", world={"failure_rate": 0.25}, budget={"experiments": 3})
    spec = load_campaign(path)
    assert spec.world.failure_rate == 0.25 and spec.world.kind == "alloy" and spec.world.noise == 0.01
    again = campaign_file(tmp_path / "d.yaml", path, space={"composition": {"elements": {"Fe": [0.5, 1.0], "Co": [0, 0.5]}}})
    assert load_campaign(again).space.input_names == ["Fe", "Co"]
    assert load_campaign(again).budget.experiments == 3


def test_the_faulty_world_fails_the_same_steps_for_the_same_seed():
    world = AlloyWorld(outputs=["magnetic_moment"])
    keys = [f"S{i:04d}:synthesis" for i in range(1, 401)]

    def failed(seed: int) -> set[str]:
        faulty = FaultyWorld(world, rate=0.25, seed=seed)
        out = set()
        for key in keys:
            try:
                faulty.synthesize({"inputs": {"Fe": 1.0}}, key=key)
            except Exception:  # noqa: BLE001
                out.add(key)
        return out

    first = failed(0)
    assert first == failed(0) and first != failed(1)
    assert 0.18 < len(first) / len(keys) < 0.32  # binomial(400, 0.25): ±3.5 sd
    assert FaultyWorld(world).name == world.name  # everything else is the world's


def test_limited_setpoints_refuse_values_outside_on_both_backends():
    soft = soft_device(Furnace(AlloyWorld(outputs=["magnetic_moment"]), None), "f_furnace",
                       {"program_temperatures": (100.0, 700.0)})
    soft.program_temperatures.put(np.array([300.0, 650.0]))
    for bad, said in ((np.array([300.0, 750.0]), "750 degC is above its upper limit 700 degC"),
                      (np.array([50.0]), "50 degC is below its lower limit 100 degC"),
                      (np.array([float("nan")]), "nan degC is below its lower limit")):
        with pytest.raises(LimitError, match=said):
            soft.program_temperatures.put(bad)
    with pytest.raises(LimitError, match="f_furnace_ramp_rate = 45 degC/min is above its upper limit 30"):
        soft.ramp_rate.put(45.0)  # the hardware's own limit, not overridden
    wider = soft_device(Furnace(AlloyWorld(outputs=["magnetic_moment"]), None), "w_furnace",
                        {"program_temperatures": (None, 5000.0)})
    with pytest.raises(LimitError, match="3000 degC is above its upper limit 1600 degC"):
        wider.program_temperatures.put(np.array([3000.0]))  # a campaign narrows the controller's limits, never widens
    epics = epics_device(Furnace, "nowhere:", "e_furnace", 2.0, {"program_temperatures": (None, 700.0)})
    with pytest.raises(LimitError, match="e_furnace_program_temperatures = 800 degC is above its upper limit 700"):
        epics.program_temperatures.check_value(np.array([800.0]))  # no IOC needed to know it is too hot


def test_a_plan_beyond_limits_fails_its_sample_before_any_run_opens(tmp_path):
    demo = load_campaign(ROOT / "configs" / "solid_state_demo.yaml").model_dump(mode="json")
    config = campaign_file(tmp_path / "c.yaml", demo, budget={"experiments": 2}, instruments=[
        {"name": "f1", "role": "synthesis", "limits": {"furnace.program_temperatures": [None, 700]}},
        {"name": "x1", "role": "characterization"}])
    run = run_in_process(config, tmp_path / "run")
    hot = {s["id"]: s["inputs"]["temperature_c"] > 700 for s in run.samples()}
    assert sorted(hot.values()) == [False, True]  # seed 0: one above the limit, one below
    for s in run.samples():
        assert s["state"] == ("failed" if hot[s["id"]] else "learned")
        if hot[s["id"]]:
            assert run.store.documents(s["id"]) == []  # refused: nothing moved, no run was opened
            [fault] = run.store.events(s["id"], kind="fault")
            assert fault.limit_violations == [
                f"f1_furnace_program_temperatures = {s['inputs']['temperature_c']:g} degC is above its upper limit 700 degC"]
        else:
            assert {d["step"] for d in run.store.documents(s["id"]) if d["name"] == "start"} == {"synthesize", "characterize"}
    bad = campaign_file(tmp_path / "d.yaml", demo, instruments=[
        {"name": "f1", "role": "synthesis", "limits": {"furnace": [0, 1]}}, {"name": "x1", "role": "characterization"}])
    with pytest.raises(AthanorError, match="limits key 'furnace': expected 'device.channel'"):
        load_campaign(bad)
