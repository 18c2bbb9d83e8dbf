"""One conductor per campaign (SQLite here; PostgreSQL in test_postgres_campaign.py), and documents as
the instrument writes them: non-finite numbers kept, and what the documents of a step say happened."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from bluesky import RunEngine
from bluesky.plans import count
from ophyd.sim import det
from sqlalchemy import update
from sqlalchemy.orm import Session

from athanor.documents import DocumentSink, decode_nonfinite, encode_nonfinite, run_outcome
from athanor.lease import CampaignHeld, LeaseLost, holder
from athanor.messages import utcnow
from athanor.store import Store
from athanor.tables import LeaseRow


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/c.db"


def opened(url, campaign="lease-1"):
    store = Store(url, campaign)
    store.register_campaign(campaign, {"campaign": campaign})
    return store


def test_a_held_campaign_refuses_a_second_conductor_naming_the_holder(url):
    first, second = opened(url), opened(url)
    assert first.acquire_lease() is None
    with pytest.raises(CampaignHeld, match=rf"held by \S+ pid {os.getpid()} since .* \(last heartbeat 0 s ago\)"):
        second.acquire_lease()
    first.heartbeat()
    assert holder(second)["pid"] == os.getpid()
    first.release_lease()
    assert holder(second) is None
    assert second.acquire_lease() is None  # free again


def test_a_silent_holder_is_taken_over_and_then_stops(url):
    first, second = opened(url), opened(url)
    first.acquire_lease()
    with Session(first.engine) as s, s.begin():
        s.execute(update(LeaseRow).values(heartbeat_at=utcnow() - timedelta(seconds=31)))
    previous = second.acquire_lease()
    assert previous["pid"] == os.getpid() and previous["why"] == "no heartbeat for over 30 s"
    with pytest.raises(LeaseLost, match="lost campaign lease-1: it is now held by"):
        first.heartbeat()
    second.heartbeat()  # the new holder goes on
    first.release_lease()  # releasing a lease one no longer holds leaves the holder's alone
    assert holder(second) is not None


def test_a_dead_holder_on_this_host_is_taken_over_at_once(url):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    first, second = opened(url), opened(url)
    first.acquire_lease()
    with Session(first.engine) as s, s.begin():
        s.execute(update(LeaseRow).values(pid=gone.pid))
    previous = second.acquire_lease()
    assert previous["pid"] == gone.pid and previous["why"] == "its process is gone"


def test_leases_are_per_campaign(url):
    assert opened(url, "a").acquire_lease() is None
    assert opened(url, "b").acquire_lease() is None


# --- documents -------------------------------------------------------------------------------------

def test_non_finite_numbers_are_encoded_beside_the_document_and_restored():
    doc = {"data": {"x": float("nan"), "y": [1.0, float("inf"), -math.inf], "a/b": {"~k": float("nan")}}, "ok": 2.5}
    body, found = encode_nonfinite(doc)
    assert found == {"/data/x": "NaN", "/data/y/1": "Infinity", "/data/y/2": "-Infinity", "/data/a~1b/~0k": "NaN"}
    assert body["data"]["y"] == [1.0, None, None] and body["ok"] == 2.5
    back = decode_nonfinite(body, found)
    assert math.isnan(back["data"]["x"]) and back["data"]["y"][1:] == [math.inf, -math.inf]
    assert math.isnan(back["data"]["a/b"]["~k"])
    assert encode_nonfinite({"v": 1.0}) == ({"v": 1.0}, {})


def test_the_sink_writes_the_start_document_before_the_plan_moves_and_the_rest_as_emitted(url):
    store = opened(url)
    calls = []

    def write(documents, sample_id, key, step, run_uid):
        calls.append([name for name, _ in documents])
        store.add_documents(documents, sample_id, key, step, run_uid)

    sink = DocumentSink(write)
    sink.begin("S0001", "lease-1:S0001:characterize", "characterize")
    engine = RunEngine(context_managers=[])
    engine.subscribe(sink)
    det.kind = "hinted"
    engine(count([det], num=2), md={"idempotency_key": "lease-1:S0001:characterize"})
    assert calls == [["start"], ["descriptor", "event"], ["event"], ["stop"]]
    stored = store.step_documents("lease-1:S0001:characterize")
    assert [n for n, _ in stored] == ["start", "descriptor", "event", "event", "stop"]
    assert {d["run_uid"] for d in store.documents("S0001")} == {stored[0][1]["uid"]}  # every event tied to its run
    assert run_outcome(stored).state == "finished"
    assert run_outcome(stored[:3]).state == "interrupted" and "never finished" in run_outcome(stored[:3]).reason
    assert run_outcome([]).state == "never_started"
    failed = stored[:-1] + [("stop", {**stored[-1][1], "exit_status": "abort", "reason": "operator stop"})]
    assert run_outcome(failed).state == "failed" and "abort: operator stop" in run_outcome(failed).reason


def test_a_store_that_cannot_take_the_start_document_stops_the_run_before_it_moves(url):
    moved = []

    def refuse(*_args):
        raise RuntimeError("store unreachable")

    sink = DocumentSink(refuse)
    sink.begin("S0001", "k", "synthesize")
    engine = RunEngine(context_managers=[])
    engine.subscribe(sink)

    def plan():
        from bluesky import plan_stubs as bps, preprocessors as bpp

        @bpp.run_decorator()
        def inner():
            moved.append(True)
            yield from bps.null()
        yield from inner()

    with pytest.raises(Exception):
        engine(plan())
    assert moved == []
