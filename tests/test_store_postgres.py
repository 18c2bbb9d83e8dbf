"""The same store on PostgreSQL, by URL, against the session's throwaway server (`pg_server`)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) is not installed")

from athanor.messages import (  # noqa: E402
    ApprovalDecision,
    ApprovalRequest,
    CampaignEvent,
    Candidate,
    DesignProposal,
    Fault,
    Measurement,
    ModelUpdate,
    SynthesisRecipe,
    SynthesisResult,
)
from athanor.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def pg_url(pg_server):
    """A database of its own for this module on the session's throwaway server (tests/helpers_pg.py)."""
    return pg_server.create_database("athanor_store")


@pytest.fixture
def store(pg_url):
    campaign = f"pg-{uuid.uuid4().hex[:8]}"
    s = Store(pg_url, campaign)
    s.register_campaign(campaign, {"campaign": campaign, "seed": 3})
    yield s
    s.close()


def env(store, sid=None, **kw):
    return dict(campaign_id=store.campaign_id, sender="conductor", sample_id=sid, **kw)


def proposal(store, *sids, batch=0):
    return DesignProposal(**env(store), batch=batch, strategy="sobol", candidates=[
        Candidate(inputs={"x": float(i), "solvent": "water"}, sample_id=sid, pool_index=i, rationale="r")
        for i, sid in enumerate(sids)])


def approve(store, sid, ok=True):
    return ApprovalDecision(**env(store, sid), approved=ok, decided_by="alice" if not ok else "policy:auto",
                            channel="chat" if not ok else "policy", reason="" if ok else "not today")


def advance_to_measured(store, sid, y, documents=()):
    store.append(approve(store, sid))
    store.append(SynthesisRecipe(**env(store, sid), route="pool-retrieval", inputs={"x": 0.0}, pool_index=0))
    store.append(SynthesisResult(**env(store, sid), instrument="synthesizer", product={"pool_index": 0}),
                 documents=documents)
    store.append(Measurement(**env(store, sid), instrument="probe", values={"y": y}, uncertainties={"y": 0.1}))


def test_server_is_postgres(store):
    assert store.engine.dialect.name == "postgresql"
    assert store.campaign_spec()["seed"] == 3


def test_lifecycle_on_postgres(store):
    docs = [("start", {"uid": "run-1", "time": 1.0}), ("stop", {"uid": "run-1-s", "run_start": "run-1", "time": 2.0})]
    store.append(proposal(store, "s1", "s2", "s3"))
    store.append(ApprovalRequest(**env(store, "s3"), policy="always", reason="wait"))
    advance_to_measured(store, "s1", 4.5, documents=docs)
    store.append(approve(store, "s2", ok=False))
    store.append(ModelUpdate(**env(store, "s1"), model_version="m1", n_train=1, metrics={"rmse": 0.0}))

    samples = store.samples()
    assert [s["id"] for s in samples] == ["s1", "s2", "s3"]
    assert [s["state"] for s in samples] == ["learned", "rejected", "proposed"]
    assert samples[0]["values"] == {"y": 4.5} and samples[0]["uncertainties"] == {"y": 0.1}
    assert samples[0]["product"] == {"pool_index": 0}
    assert samples[0]["inputs"] == {"x": 0.0, "solvent": "water"}
    assert samples[1]["error"] == "rejected by alice: not today"
    assert samples[2]["awaiting_approval"] is True
    assert [a["approved"] for a in store.approvals()] == [True, False]
    assert [d["name"] for d in store.documents("s1")] == ["start", "stop"]
    assert {d["run_uid"] for d in store.documents("s1")} == {"run-1"}
    assert store.count_events("measurement") == 1
    assert [e.kind for e in store.events(sample_id="s2")] == ["approval_decision"]

    store.rebuild()
    assert store.samples() == samples


def test_refusals_roll_back_on_postgres(store):
    store.append(proposal(store, "s1"))
    bad = Measurement(**env(store, "s1"), instrument="probe", values={"y": 1.0})
    with pytest.raises(ValueError):
        store.append(bad)
    assert store.count_events("measurement") == 0
    assert store.sample("s1")["state"] == "proposed"

    advance_to_measured(store, "s1", 2.0)
    with pytest.raises(Exception):
        store.append(Measurement(**env(store, "s1"), instrument="probe", values={"y": 9.0}))
    assert store.count_events("measurement") == 1
    assert store.sample("s1")["values"] == {"y": 2.0}
    store.append(Fault(**env(store, "s1"), step="learn", error="learner crashed"))
    assert store.sample("s1")["state"] == "failed"
    assert store.sample("s1")["error"] == "learn: learner crashed"


def test_inbox_on_postgres(store, pg_url):
    other = Store(pg_url, store.campaign_id)
    other.post_command({"action": "approve", "sample_id": "s1", "user": "bob"})
    other.post_command({"action": "pause"})
    other.close()
    assert store.take_commands() == [{"action": "approve", "sample_id": "s1", "user": "bob"}, {"action": "pause"}]
    assert store.take_commands() == []


def test_campaigns_isolated_and_wall_time_on_postgres(store, pg_url):
    other = Store(pg_url, store.campaign_id + "-b")
    other.register_campaign(other.campaign_id, {})
    store.append(proposal(store, "s1"))
    other.append(proposal(other, "s1", "s2"))
    advance_to_measured(other, "s1", 8.0)
    assert [s["state"] for s in store.samples()] == ["proposed"]
    assert store.sample("s1")["values"] == {}
    assert other.sample("s1")["values"] == {"y": 8.0}
    other.post_command({"action": "pause"})
    assert store.take_commands() == []
    other.close()

    t0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
    store.append(CampaignEvent(**env(store), event="started", created_at=t0))
    store.append(CampaignEvent(**env(store), event="paused", created_at=t0 + timedelta(seconds=6)))
    store.append(CampaignEvent(**env(store), event="resumed", created_at=t0 + timedelta(hours=2)))
    store.append(CampaignEvent(**env(store), event="ended", created_at=t0 + timedelta(hours=2, seconds=4)))
    assert store.wall_time_s() == pytest.approx(10.0)


def test_model_update_metrics_are_logged_on_postgres(store):
    store.append(ModelUpdate(**env(store), model_version="m1", n_train=1, metrics={"r2": 0.5}))
    assert store.count_events("model_update") == 1
