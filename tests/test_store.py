"""The store on SQLite: the log, the sample lifecycle derived from it, documents, inbox, rebuild."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from athanor.errors import AthanorError
from athanor.messages import (
    ApprovalDecision,
    ApprovalRequest,
    CampaignEvent,
    Candidate,
    DesignProposal,
    Fault,
    Measurement,
    ModelUpdate,
    StepIntent,
    SynthesisRecipe,
    SynthesisResult,
)
from athanor.store import Store
from athanor.tables import MeasurementRow, SampleRow

CAMP = "camp-1"


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/c.db"


@pytest.fixture
def store(url):
    s = Store(url, CAMP)
    s.register_campaign(CAMP, {"campaign": CAMP, "seed": 0})
    yield s
    s.close()


def env(sample_id=None, campaign=CAMP, **kw):
    return dict(campaign_id=campaign, sender="conductor", sample_id=sample_id, **kw)


def proposal(*sample_ids, batch=0, campaign=CAMP, pool_start=0):
    return DesignProposal(
        **env(campaign=campaign), batch=batch, strategy="random", model_version="m0",
        candidates=[Candidate(inputs={"x": 0.1 * (i + 1), "solvent": "water"}, sample_id=sid,
                              pool_index=pool_start + i, acquisition_value=float(i), rationale=f"pick {i}")
                    for i, sid in enumerate(sample_ids)])


def approve(sid, campaign=CAMP, ok=True, by="policy:auto", reason=""):
    return ApprovalDecision(**env(sid, campaign), approved=ok, decided_by=by, channel="policy", reason=reason)


def recipe(sid, campaign=CAMP):
    return SynthesisRecipe(**env(sid, campaign), route="pool-retrieval", inputs={"x": 0.1}, pool_index=0,
                           steps=[{"action": "retrieve", "pool_index": 0}])


def result(sid, campaign=CAMP):
    return SynthesisResult(**env(sid, campaign), instrument="synthesizer", product={"pool_index": 0},
                           run_uids=["run-a"], duration_s=0.25)


def measurement(sid, campaign=CAMP, y=1.5):
    return Measurement(**env(sid, campaign), instrument="probe", values={"y": y, "z": -2.0},
                       uncertainties={"y": 0.05})


def learned(sid, campaign=CAMP):
    return ModelUpdate(**env(sid, campaign), model_version="m1", n_train=1, metrics={"rmse": 0.1})


def through_measurement(store, sid, campaign=CAMP, y=1.5):
    for m in (approve(sid, campaign), recipe(sid, campaign), result(sid, campaign), measurement(sid, campaign, y)):
        store.append(m)


def state(store, sid):
    return store.sample(sid)["state"]


# --- the lifecycle ----------------------------------------------------------------------------------


def test_proposal_creates_proposed_samples(store):
    p = proposal("s1", "s2", "s3", batch=2)
    store.append(p)
    samples = store.samples()
    assert [s["id"] for s in samples] == ["s1", "s2", "s3"]
    assert [s["seq"] for s in samples] == [0, 1, 2]
    assert all(s["state"] == "proposed" and s["batch"] == 2 for s in samples)
    assert samples[1]["inputs"] == {"x": 0.2, "solvent": "water"}
    assert samples[1]["pool_index"] == 1
    assert samples[1]["candidate"]["rationale"] == "pick 1"
    assert samples[1]["candidate"]["acquisition_value"] == 1.0
    assert samples[0]["values"] == {} and samples[0]["error"] is None
    assert not samples[0]["awaiting_approval"]
    assert store.count_events("design_proposal") == 1
    (logged,) = store.events(kind="design_proposal")
    assert logged == p


def test_second_proposal_continues_seq(store):
    store.append(proposal("s1", "s2"))
    store.append(proposal("s3", batch=1, pool_start=5))
    assert [(s["id"], s["seq"], s["batch"]) for s in store.samples()] == [("s1", 0, 0), ("s2", 1, 0), ("s3", 2, 1)]


def test_approval_request_then_approval(store):
    store.append(proposal("s1"))
    store.append(ApprovalRequest(**env("s1"), policy="always", reason="a person decides"))
    s = store.sample("s1")
    assert s["state"] == "proposed" and s["awaiting_approval"] is True
    store.append(ApprovalDecision(**env("s1"), approved=True, decided_by="alice", channel="cli"))
    s = store.sample("s1")
    assert s["state"] == "approved" and s["awaiting_approval"] is False
    (a,) = store.approvals()
    assert a["sample_id"] == "s1" and a["approved"] is True and a["decided_by"] == "alice" and a["channel"] == "cli"


def test_rejection(store):
    store.append(proposal("s1"))
    store.append(approve("s1", ok=False, by="bob", reason="too expensive"))
    s = store.sample("s1")
    assert s["state"] == "rejected"
    assert s["error"] == "rejected by bob: too expensive"
    with pytest.raises(ValueError):
        store.append(recipe("s1"))
    assert state(store, "s1") == "rejected"


def test_full_lifecycle(store):
    store.append(proposal("s1", "s2"))
    store.append(approve("s1"))
    assert state(store, "s1") == "approved" and state(store, "s2") == "proposed"
    store.append(recipe("s1"))
    s = store.sample("s1")
    assert s["state"] == "planned"
    assert s["recipe"]["route"] == "pool-retrieval" and s["recipe"]["steps"] == [{"action": "retrieve", "pool_index": 0}]
    store.append(result("s1"))
    s = store.sample("s1")
    assert s["state"] == "synthesized" and s["product"] == {"pool_index": 0}
    assert s["values"] == {}
    store.append(measurement("s1", y=3.25))
    s = store.sample("s1")
    assert s["state"] == "characterized"
    assert s["values"] == {"y": 3.25, "z": -2.0}
    assert s["uncertainties"] == {"y": 0.05}
    store.append(learned("s1"))
    s = store.sample("s1")
    assert s["state"] == "learned" and s["values"] == {"y": 3.25, "z": -2.0}
    assert [x["id"] for x in store.samples(states=["learned"])] == ["s1"]
    assert [x["id"] for x in store.samples(states=["proposed", "approved"])] == ["s2"]
    assert store.samples(states=[]) == []
    assert store.sample("missing") is None


def test_model_update_without_sample_changes_nothing(store):
    store.append(proposal("s1"))
    through_measurement(store, "s1")
    store.append(ModelUpdate(**env(None), model_version="m1", n_train=1))
    assert state(store, "s1") == "characterized"
    assert store.count_events("model_update") == 1


def test_fault_fails_sample_and_keeps_error(store):
    store.append(proposal("s1", "s2"))
    store.append(approve("s1"))
    store.append(recipe("s1"))
    store.append(Fault(**env("s1"), step="synthesize", error="furnace tripped"))
    s = store.sample("s1")
    assert s["state"] == "failed"
    assert s["error"] == "synthesize: furnace tripped"
    assert s["recipe"]["route"] == "pool-retrieval"  # kept: negative results are data
    with pytest.raises(ValueError):
        store.append(result("s1"))
    assert state(store, "s1") == "failed"
    # a fault from the proposed state too
    store.append(Fault(**env("s2"), step="design", error="bad candidate"))
    assert state(store, "s2") == "failed"


def test_non_fatal_and_campaign_faults_leave_samples(store):
    store.append(proposal("s1"))
    store.append(Fault(**env("s1"), step="characterize", error="retrying", fatal_for_sample=False))
    store.append(Fault(**env(None), step="design", error="designer slow"))
    s = store.sample("s1")
    assert s["state"] == "proposed" and s["error"] is None
    assert store.count_events("fault") == 2


def test_step_intent_logged_without_changing_state(store):
    store.append(proposal("s1"))
    store.append(approve("s1"))
    store.append(StepIntent(**env("s1"), step="plan", idempotency_key=f"{CAMP}:s1:plan", target="planner"))
    assert state(store, "s1") == "approved"
    (intent,) = store.events(kind="step_intent")
    assert intent.idempotency_key == f"{CAMP}:s1:plan"


# --- refusals leave nothing half-written -------------------------------------------------------------------


def test_illegal_transition_raises_and_is_not_logged(store):
    store.append(proposal("s1"))
    before = store.events()
    bad = measurement("s1")
    with pytest.raises(ValueError, match="cannot go from proposed to characterized"):
        store.append(bad, documents=[("start", {"uid": "run-x", "time": 0.0})])
    assert store.events() == before
    assert store.count_events("measurement") == 0
    assert all(e.id != bad.id for e in store.events())
    s = store.sample("s1")
    assert s["state"] == "proposed" and s["values"] == {}
    assert store.documents("s1") == []
    with Session(store.engine) as session:
        assert session.query(MeasurementRow).count() == 0


@pytest.mark.parametrize("make", [result, measurement, learned], ids=["result", "measurement", "model_update"])
def test_skipping_steps_is_illegal(store, make):
    store.append(proposal("s1"))
    store.append(approve("s1"))
    with pytest.raises(ValueError, match="cannot go from approved"):
        store.append(make("s1"))
    assert state(store, "s1") == "approved"
    assert store.events(sample_id="s1", kind=make("s1").kind) == []


def test_going_back_is_illegal(store):
    store.append(proposal("s1"))
    through_measurement(store, "s1")
    for backwards in (approve("s1"), recipe("s1"), ApprovalRequest(**env("s1"), policy="always", reason="r")):
        with pytest.raises(ValueError):
            store.append(backwards)
    assert state(store, "s1") == "characterized"
    assert store.count_events("approval_decision") == 1 and store.count_events("approval_request") == 0


def test_message_for_unknown_sample_raises(store):
    with pytest.raises(ValueError, match="no sample"):
        store.append(approve("ghost"))
    assert store.events() == []


def test_second_measurement_refused(store):
    store.append(proposal("s1"))
    through_measurement(store, "s1", y=1.0)
    again = measurement("s1", y=99.0)
    with pytest.raises(Exception):
        store.append(again)
    assert store.count_events("measurement") == 1
    assert all(e.id != again.id for e in store.events())
    assert store.sample("s1")["values"]["y"] == 1.0
    store.append(learned("s1"))
    with pytest.raises(ValueError):
        store.append(measurement("s1", y=42.0))
    assert store.count_events("measurement") == 1
    assert store.sample("s1")["values"]["y"] == 1.0


def test_wrong_campaign_refused(store):
    with pytest.raises(ValueError):
        store.append(proposal("s1", campaign="camp-other"))
    assert store.samples() == [] and store.events() == []


def test_candidate_without_sample_id_refused(store):
    bad = DesignProposal(**env(), batch=0, strategy="random", candidates=[Candidate(inputs={"x": 1.0})])
    with pytest.raises(Exception):
        store.append(bad)
    assert store.events() == [] and store.samples() == []


def test_duplicate_event_id_refused(store):
    p = proposal("s1")
    store.append(p)
    with pytest.raises(Exception):
        store.append(approve("s1").model_copy(update={"id": p.id}))
    assert state(store, "s1") == "proposed"
    assert len(store.events()) == 1


# --- rebuild -----------------------------------------------------------------------------------------------


def _busy_campaign(store):
    store.append(proposal("s1", "s2", "s3", "s4"))
    through_measurement(store, "s1", y=2.0)
    store.append(learned("s1"))
    store.append(approve("s2", ok=False, by="bob", reason="no"))
    store.append(ApprovalRequest(**env("s3"), policy="always", reason="wait"))
    store.append(approve("s4"))
    store.append(Fault(**env("s4"), step="plan", error="no route"))
    store.append(proposal("s5", batch=1, pool_start=9))
    through_measurement(store, "s5", y=-1.0)


def test_rebuild_reproduces_samples(store):
    _busy_campaign(store)
    samples, approvals = store.samples(), store.approvals()
    assert [s["state"] for s in samples] == ["learned", "rejected", "proposed", "failed", "characterized"]
    store.rebuild()
    assert store.samples() == samples
    assert store.approvals() == approvals
    store.rebuild()
    assert store.samples() == samples


def test_rebuild_repairs_derived_tables(store):
    _busy_campaign(store)
    samples = store.samples()
    with Session(store.engine) as s, s.begin():
        s.execute(delete(MeasurementRow))
        s.execute(update(SampleRow).where(SampleRow.id == "s2").values(state="approved", error=None))
        s.execute(delete(SampleRow).where(SampleRow.id == "s3"))
    assert store.samples() != samples
    store.rebuild()
    assert store.samples() == samples


def test_rebuild_from_a_fresh_store_object(url, store):
    _busy_campaign(store)
    samples = store.samples()
    other = Store(url, CAMP)
    other.rebuild()
    assert other.samples() == samples
    assert other.campaign_spec() == {"campaign": CAMP, "seed": 0}
    other.close()


# --- documents ---------------------------------------------------------------------------------------------


def _run_documents(run="run-a"):
    return [
        ("start", {"uid": run, "time": 1.0, "plan_name": "count"}),
        ("descriptor", {"uid": f"{run}-d", "run_start": run, "time": 1.1, "data_keys": {}}),
        ("event", {"uid": f"{run}-e1", "descriptor": f"{run}-d", "seq_num": 1, "time": 1.2,
                   "data": {"y": 1.5}, "timestamps": {"y": 1.2}}),
        ("stop", {"uid": f"{run}-s", "run_start": run, "time": 1.3, "exit_status": "success"}),
    ]


def _to_synthesized(store, sid):
    store.append(proposal(sid))
    store.append(approve(sid))
    store.append(recipe(sid))


def test_documents_retrievable_by_sample(store):
    _to_synthesized(store, "s1")
    docs = _run_documents()
    store.append(result("s1"), documents=docs)
    got = store.documents("s1")
    assert [d["name"] for d in got] == ["start", "descriptor", "event", "stop"]
    assert [d["doc"] for d in got] == [doc for _, doc in docs]
    assert got[0]["run_uid"] == "run-a" and got[1]["run_uid"] == "run-a" and got[3]["run_uid"] == "run-a"
    assert store.documents("s2") == []


def test_documents_survive_rebuild(store):
    _to_synthesized(store, "s1")
    store.append(result("s1"), documents=_run_documents())
    before = store.documents("s1")
    store.rebuild()
    assert store.documents("s1") == before and len(before) == 4


def test_event_documents_link_to_their_run(store):
    _to_synthesized(store, "s1")
    store.append(result("s1"), documents=_run_documents("run-a"))
    assert {d["run_uid"] for d in store.documents("s1")} == {"run-a"}


# --- the inbox -----------------------------------------------------------------------------------------------


def test_inbox_commands_taken_once(store):
    assert store.take_commands() == []
    store.post_command({"action": "approve", "sample_id": "s1", "user": "alice"})
    store.post_command({"action": "pause"})
    assert store.take_commands() == [{"action": "approve", "sample_id": "s1", "user": "alice"}, {"action": "pause"}]
    assert store.take_commands() == []
    store.post_command({"action": "reject", "sample_id": "s2", "reason": "no"})
    assert store.take_commands() == [{"action": "reject", "sample_id": "s2", "reason": "no"}]
    assert store.take_commands() == []


def test_inbox_works_from_another_store_object(url, store):
    other = Store(url, CAMP)  # e.g. `athanor approve` while the conductor runs
    other.post_command({"action": "approve", "sample_id": "s9"})
    other.close()
    assert store.take_commands() == [{"action": "approve", "sample_id": "s9"}]


# --- wall time ---------------------------------------------------------------------------------------------


def test_wall_time_empty_is_zero(store):
    assert store.wall_time_s() == 0.0


def test_wall_time_real_clock_non_negative(store):
    store.append(CampaignEvent(**env(), event="started"))
    time.sleep(0.02)
    store.append(proposal("s1"))
    wall = store.wall_time_s()
    assert 0.0 <= wall < 60.0
    assert wall >= 0.015


def test_wall_time_sums_sessions(store):
    t0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)

    def at(seconds, **kw):
        return dict(campaign_id=CAMP, sender="conductor", created_at=t0 + timedelta(seconds=seconds), **kw)

    store.append(CampaignEvent(**at(0), event="started"))
    store.append(Fault(**at(4), step="design", error="x", fatal_for_sample=False))
    store.append(CampaignEvent(**at(10), event="paused"))
    assert store.wall_time_s() == pytest.approx(10.0)
    # an hour of downtime does not count
    store.append(CampaignEvent(**at(3600), event="resumed"))
    store.append(CampaignEvent(**at(3625), event="ended", status="done"))
    assert store.wall_time_s() == pytest.approx(35.0)
    store.append(CampaignEvent(**at(7200), event="resumed"))
    assert store.wall_time_s() == pytest.approx(35.0)
    store.append(Fault(**at(7202.5), step="design", error="y", fatal_for_sample=False))
    assert store.wall_time_s() == pytest.approx(37.5)


def test_wall_time_respects_utc_offsets(store):
    t0 = datetime(2024, 1, 1, 9, 0, tzinfo=timezone.utc)
    later = (t0 + timedelta(seconds=5)).astimezone(timezone(timedelta(hours=2)))
    store.append(CampaignEvent(campaign_id=CAMP, sender="conductor", event="started", created_at=t0))
    store.append(CampaignEvent(campaign_id=CAMP, sender="conductor", event="ended", created_at=later))
    assert store.wall_time_s() == pytest.approx(5.0)


# --- campaigns side by side ------------------------------------------------------------------------------------


def test_two_campaigns_are_isolated(url, store):
    other = Store(url, "camp-2")
    other.register_campaign("camp-2", {"campaign": "camp-2"})
    store.append(proposal("s1", "s2"))
    other.append(proposal("s1", "t2", campaign="camp-2"))
    through_measurement(store, "s1", y=1.0)
    through_measurement(other, "s1", campaign="camp-2", y=7.0)
    other.append(Fault(**env("t2", "camp-2"), step="plan", error="x"))
    other.post_command({"action": "pause"})

    assert [s["id"] for s in store.samples()] == ["s1", "s2"]
    assert [s["id"] for s in other.samples()] == ["s1", "t2"]
    assert store.sample("s1")["values"]["y"] == 1.0
    assert other.sample("s1")["values"]["y"] == 7.0
    assert state(store, "s2") == "proposed" and state(other, "t2") == "failed"
    assert store.count_events("fault") == 0 and other.count_events("fault") == 1
    assert all(e.campaign_id == CAMP for e in store.events())
    assert store.take_commands() == []
    assert other.take_commands() == [{"action": "pause"}]
    assert store.campaign_spec() == {"campaign": CAMP, "seed": 0}
    assert other.campaign_spec() == {"campaign": "camp-2"}

    store.rebuild()
    assert store.sample("s1")["values"]["y"] == 1.0
    assert [s["id"] for s in other.samples()] == ["s1", "t2"]
    assert other.sample("s1")["values"]["y"] == 7.0
    other.close()


def test_events_filtered_by_sample(store):
    store.append(proposal("s1", "s2"))
    a1, a2 = approve("s1"), approve("s2")
    store.append(a1)
    store.append(a2)
    assert store.events(sample_id="s1") == [a1]
    assert store.events(sample_id="s2", kind="approval_decision") == [a2]
    assert store.events(kind="measurement") == []


def test_register_campaign_replace(store):
    store.register_campaign(CAMP, {"seed": 1})
    assert store.campaign_spec() == {"campaign": CAMP, "seed": 0}
    store.register_campaign(CAMP, {"seed": 1}, replace=True)
    assert store.campaign_spec() == {"seed": 1}


def test_unknown_campaign_spec_is_none(url, store):
    other = Store(url, "never-registered")
    assert other.campaign_spec() is None
    other.close()


def test_bad_url_is_a_clear_error(tmp_path):
    with pytest.raises(AthanorError, match="cannot open the store"):
        Store(f"sqlite:///{tmp_path}/missing-dir/x/c.db", CAMP)
