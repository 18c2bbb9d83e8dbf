"""Campaigns whose store is PostgreSQL (`store_url:`), against the session's throwaway server.

- Bluesky documents with NaN and infinities are kept and read back as they were emitted (PostgreSQL's
  JSON has no NaN: they are stored as null plus a `nonfinite` map), on SQLite and PostgreSQL.
- A real campaign whose pool has a row without an objective value: the probe reads NaN, the sample
  fails with a one-line fault, the campaign completes, and `--resume` with a larger budget goes on.
- One conductor per campaign: a second `athanor run --resume` on a running campaign refuses at once,
  naming the holder; the lease on PostgreSQL refuses, takes over a silent holder, and tells the old
  holder it lost.
- The server stopped mid-campaign: back within `store_retry_s`, the campaign waits and finishes as an
  uninterrupted run would; down for longer, it stops with one line, and `--resume` finishes it.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from athanor.campaign import open_run
from athanor.documents import run_outcome
from athanor.messages import (
    ApprovalDecision,
    Candidate,
    DesignProposal,
    SynthesisRecipe,
    SynthesisResult,
    utcnow,
)
from athanor.store import Store
from athanor.tables import DocumentRow, LeaseRow
from conftest import DATA, P3HT_INPUTS, P3HT_OBJECTIVE, write_campaign
from helpers_proc import kill, start_run, wait_for

NAN, INF = float("nan"), float("inf")
BUDGET = 10  # the outage campaigns: 10 samples, 0.3 s per instrument step


# --- helpers -------------------------------------------------------------------------------------
def pg_campaign(path: Path, url: str | None, retry_s: float | None = None, extra: str = "", **kw) -> Path:
    """A replay campaign file (conftest.write_campaign) with its store on PostgreSQL at `url`."""
    config = write_campaign(path, **kw)
    text = config.read_text()
    if url is not None:
        text += f"store_url: {url}\n"
    if retry_s is not None:
        text += f"store_retry_s: {retry_s}\n"
    config.write_text(text + extra)
    return config


def wait_measured(out: Path, n: int, timeout: float = 90) -> None:
    """Until the campaign in `out` has logged `n` measurements (one store, opened once run.json is there)."""
    opened: list[Store] = []

    def count() -> int:
        if not opened:
            opened.append(open_run(out)[0])
        return opened[0].count_events("measurement")

    try:
        wait_for(lambda: count() >= n, timeout=timeout, what=f"{n} measurement(s)")
    finally:
        for store in opened:
            store.close()


def outcome(out: Path) -> tuple[dict[str, tuple[int, dict]], int, list[str]]:
    """{sample id: (pool row, values)}, the number of logged measurements, and the campaign events."""
    store, _ = open_run(out)
    try:
        found = {s["id"]: (s["pool_index"], s["values"]) for s in store.samples()}
        return found, store.count_events("measurement"), [e.event for e in store.events(kind="campaign_event")]
    finally:
        store.close()


@contextmanager
def reaped(process):
    """Whatever happens in the block, the campaign's process group does not outlive the test."""
    try:
        yield process
    finally:
        if process.poll() is None:
            kill(process)


def finish(process, timeout: float = 150) -> tuple[str, str, float]:
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=timeout)
    return stdout, stderr, time.monotonic() - started


def event_documents(run: str = "run-1") -> list[tuple[str, dict]]:
    """A probe run whose event holds NaN, +inf and -inf, at the top level and inside a list."""
    return [
        ("start", {"uid": run, "time": 1.0, "idempotency_key": f"k-{run}", "step": "characterize"}),
        ("descriptor", {"uid": f"{run}-d", "run_start": run, "time": 1.1, "data_keys": {}}),
        ("event", {"uid": f"{run}-e", "descriptor": f"{run}-d", "seq_num": 1, "time": 1.2,
                   "data": {"y": NAN, "hot": INF, "cold": -INF, "ok": 2.5, "trace": [1.0, NAN, INF, -INF]},
                   "timestamps": {"y": 1.2}}),
        ("stop", {"uid": f"{run}-s", "run_start": run, "time": 1.3, "exit_status": "success"}),
    ]


def assert_nonfinite_event(doc: dict) -> None:
    data = doc["data"]
    assert math.isnan(data["y"])
    assert data["hot"] == INF and data["cold"] == -INF and data["ok"] == 2.5
    assert data["trace"][0] == 1.0 and math.isnan(data["trace"][1])
    assert data["trace"][2:] == [INF, -INF]


# --- a. non-finite numbers in documents -----------------------------------------------------------
@pytest.fixture(scope="module")
def pg_url(pg_server):
    return pg_server.create_database("athanor_campaigns")


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_store(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/campaign.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    campaign = f"nan-{uuid.uuid4().hex[:8]}"
    store = Store(url, campaign)
    store.register_campaign(campaign, {"campaign": campaign})
    yield store
    store.close()


def test_nonfinite_documents_are_kept_and_read_back(fresh_store):
    store = fresh_store
    env = dict(campaign_id=store.campaign_id, sender="conductor")
    store.append(DesignProposal(**env, batch=0, strategy="sobol", candidates=[
        Candidate(inputs={"x": 1.0}, sample_id="S0001", pool_index=0, rationale="r")]))
    # As an instrument streams them (the start alone first, then the rest) ...
    docs = event_documents()
    store.add_documents(docs[:1], "S0001", key="k-run-1", step="characterize", run_uid="run-1")
    store.add_documents(docs[1:], "S0001", key="k-run-1", step="characterize", run_uid="run-1")
    # ... and as a logged message carries them.
    store.append(ApprovalDecision(**env, sample_id="S0001", approved=True, decided_by="policy:auto", channel="policy"))
    store.append(SynthesisRecipe(**env, sample_id="S0001", route="pool-retrieval", inputs={"x": 1.0}, pool_index=0))
    store.append(SynthesisResult(**env, sample_id="S0001", instrument="synthesizer", product={"pool_index": 0}),
                 documents=event_documents("run-2"))
    assert store.sample("S0001")["state"] == "synthesized"

    stored = store.documents("S0001")
    assert [d["name"] for d in stored] == ["start", "descriptor", "event", "stop"] * 2
    for d in stored:
        if d["name"] == "event":
            assert_nonfinite_event(d["doc"])
    step = store.step_documents("k-run-1")
    assert [n for n, _ in step] == ["start", "descriptor", "event", "stop"]
    assert_nonfinite_event(step[2][1])
    assert run_outcome(step).state == "finished"

    # In the table: null in the body, the JSON pointer of each non-finite number beside it.
    with Session(store.engine) as s:
        row = s.scalars(select(DocumentRow).where(DocumentRow.campaign_id == store.campaign_id,
                                                  DocumentRow.name == "event").order_by(DocumentRow.id)).first()
        assert row.body["data"]["y"] is None and row.body["data"]["trace"][1] is None
        assert row.nonfinite == {"/data/y": "NaN", "/data/hot": "Infinity", "/data/cold": "-Infinity",
                                 "/data/trace/1": "NaN", "/data/trace/2": "Infinity", "/data/trace/3": "-Infinity"}

    # What resume does first: rebuild the derived tables from the log, and read the step back.
    store.rebuild()
    again = Store(store.url, store.campaign_id)
    try:
        assert again.sample("S0001")["state"] == "synthesized"
        assert_nonfinite_event(again.step_documents("k-run-1")[2][1])
    finally:
        again.close()


def test_an_append_whose_commit_went_through_is_not_logged_twice(fresh_store):
    """The connection is lost after the server committed but before it said so: the store retries, finds
    the event in the log and returns what it changed, without a second event or a second transition."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    store = fresh_store
    env = dict(campaign_id=store.campaign_id, sender="conductor")
    store.append(DesignProposal(**env, batch=0, strategy="sobol", candidates=[
        Candidate(inputs={"x": 1.0}, sample_id="S0001", pool_index=0, rationale="r")]))
    lost: list[str] = []

    def lose_the_acknowledgement(_session) -> None:
        if not lost:
            lost.append("commit")
            raise OperationalError("COMMIT", {}, ConnectionError("server closed the connection unexpectedly"))

    event.listen(Session, "after_commit", lose_the_acknowledgement)
    try:
        changed = store.append(ApprovalDecision(**env, sample_id="S0001", approved=True, decided_by="policy:auto",
                                                channel="policy"))
    finally:
        event.remove(Session, "after_commit", lose_the_acknowledgement)
    assert lost == ["commit"]
    assert [s["state"] for s in changed] == ["approved"]
    assert store.count_events("approval_decision") == 1 and len(store.approvals()) == 1


def test_reads_wait_for_a_restarted_server_and_give_up_in_one_line(pg_server):
    """Every store call waits out an outage, reads as well as writes (`athanor run` reads the campaign's
    controls, its log on resume, its outputs at the end); past the window, one line and no SQL."""
    import threading

    from athanor.store import StoreUnavailable

    store = Store(pg_server.create_database(), "reads-1", retry_s=30)
    store.register_campaign("reads-1", {"campaign": "reads-1"})
    pg_server.stop("fast")
    restart = threading.Timer(2.0, pg_server.start)
    restart.start()
    try:
        assert store.samples() == [] and store.controls() == {"paused": False, "batch_size": None}
    finally:
        restart.join()
    store.retry_s = 1.0
    pg_server.stop("fast")
    try:
        with pytest.raises(StoreUnavailable) as info:
            store.wall_time_s()
    finally:
        pg_server.start()
    [line] = str(info.value).splitlines()
    assert "unreachable for 1 s" in line and "--resume" in line
    assert not any(word in line for word in ("SELECT", "[SQL:", "Background on this error"))
    assert store.wall_time_s() == 0.0  # and it works again once the server is back


# --- b. a campaign on PostgreSQL whose probe reads NaN ---------------------------------------------
def nan_pool(folder: Path, rows: int = 16) -> tuple[Path, int]:
    """`rows` distinct pool rows of P3HT.csv; the first row the designer picks has no objective value,
    so the replay world reads NaN for it. Returns the CSV and that row."""
    from athanor.agents.designer import make_strategy
    from athanor.spec import load_campaign

    table = pd.read_csv(DATA / "P3HT.csv").drop_duplicates(subset=P3HT_INPUTS).head(rows).reset_index(drop=True)
    path = folder / "pool.csv"
    table.to_csv(path, index=False)
    spec = load_campaign(write_campaign(folder / "probe.yaml", dataset=path, budget=8, batch_size=2))
    first = make_strategy(spec, table[P3HT_INPUTS].to_numpy(dtype=float)).propose([], spec.batch_size, [])
    row = first[0].pool_index
    table.loc[row, P3HT_OBJECTIVE] = NAN  # an empty cell: allowed in an objective column
    table.to_csv(path, index=False)
    return path, row


def all_nan(event: dict) -> bool:
    """Every reading of a probe's event document is NaN (and there is one)."""
    readings = [v for v in event["data"].values() if isinstance(v, float)]
    return bool(readings) and all(math.isnan(v) for v in readings)


@pytest.mark.slow
def test_campaign_on_postgres_with_a_nan_reading(tmp_path, ray_address, pg_server):
    url = pg_server.create_database()
    pool, nan_row = nan_pool(tmp_path)
    config = pg_campaign(tmp_path / "c.yaml", url, dataset=pool, budget=8, batch_size=2, noise=0.05)
    out = tmp_path / "run"

    with reaped(start_run(config, out, ray_address)) as process:
        _, stderr, _ = finish(process)
    assert process.returncode == 0, stderr
    store, _ = open_run(out)
    try:
        assert store.engine.dialect.name == "postgresql"
        found = {s["pool_index"]: s for s in store.samples()}
        bad = found[nan_row]
        assert bad["state"] == "failed" and bad["values"] == {}
        assert "non-finite reading nan" in bad["error"] and P3HT_OBJECTIVE in bad["error"], bad["error"]
        others = [s for s in found.values() if s is not bad]
        assert len(others) == 7 and all(s["state"] == "learned" for s in others)
        assert all(math.isfinite(v) for s in others for v in s["values"].values())
        # The probe's own documents, NaN included, are in PostgreSQL and read back as NaN.
        events = [d["doc"] for d in store.documents(bad["id"]) if d["name"] == "event" and d["step"] == "characterize"]
        assert events and all_nan(events[-1])
        assert store.count_events("measurement") == 7
    finally:
        store.close()

    with reaped(start_run(config, out, ray_address, "--resume", "--max-experiments", "10")) as process:
        _, stderr, _ = finish(process)
    assert process.returncode == 0, stderr
    store, _ = open_run(out)
    try:
        ended = [e.status for e in store.events(kind="campaign_event") if e.event == "ended"]
        assert [e.event for e in store.events(kind="campaign_event")] == ["started", "ended", "resumed", "ended"]
        assert ended == ["completed", "completed"]
        after = {s["id"]: s for s in store.samples()}
        assert len(after) == 10 and store.count_events("measurement") == 9
        assert after[bad["id"]]["state"] == "failed" and after[bad["id"]]["error"] == bad["error"]
        assert all(after[s["id"]]["values"] == s["values"] for s in others)  # nothing measured again
        assert len({s["pool_index"] for s in after.values()}) == 10
        kept = [d["doc"] for d in store.documents(bad["id"]) if d["name"] == "event" and d["step"] == "characterize"]
        assert len(kept) == len(events) and all_nan(kept[-1])
    finally:
        store.close()


# --- c. one conductor per campaign ---------------------------------------------------------------
def test_lease_on_postgres(pg_url):
    from athanor.lease import CampaignHeld, LeaseLost, holder

    campaign = f"lease-{uuid.uuid4().hex[:8]}"
    first, second = Store(pg_url, campaign), Store(pg_url, campaign)
    try:
        first.register_campaign(campaign, {"campaign": campaign})
        assert first.acquire_lease() is None
        with pytest.raises(CampaignHeld, match="held by"):
            second.acquire_lease()
        first.heartbeat()  # still ours
        with Session(first.engine) as s, s.begin():
            s.execute(update(LeaseRow).where(LeaseRow.campaign_id == campaign)
                      .values(heartbeat_at=utcnow() - timedelta(seconds=60)))
        previous = second.acquire_lease()
        assert previous is not None and previous["holder"] == first.lease_holder
        assert "no heartbeat" in previous["why"]
        assert holder(second)["pid"] == previous["pid"]  # the same process here; a new holder token
        with pytest.raises(LeaseLost):
            first.heartbeat()
        second.heartbeat()
        second.release_lease()
        assert holder(second) is None
    finally:
        first.close()
        second.close()


@pytest.mark.slow
def test_second_conductor_on_postgres_refuses(tmp_path, ray_address, pg_server):
    budget = 8
    config = pg_campaign(tmp_path / "c.yaml", pg_server.create_database(), budget=budget, batch_size=2,
                         latency_s=0.3, noise=0.05)
    out = tmp_path / "run"
    with reaped(start_run(config, out, ray_address)) as first:
        wait_measured(out, 1)
        with reaped(start_run(config, out, ray_address, "--resume")) as second:
            _, stderr, took = finish(second, timeout=60)
        assert second.returncode == 2, stderr
        assert "held by" in stderr and stderr.startswith("athanor: error:"), stderr
        assert took < 15, f"the second conductor took {took:.1f} s to refuse"
        assert first.poll() is None, "the refusal should come while the first conductor runs"
        _, first_err, _ = finish(first)
    assert first.returncode == 0, first_err
    found, n_measured, events = outcome(out)
    assert events == ["started", "ended"]  # the second conductor logged nothing, not even 'resumed'
    assert n_measured == budget and len(found) == budget
    assert all(values for _, values in found.values())


# --- d. the server stopped mid-campaign ----------------------------------------------------------
OUTAGE_CAMPAIGN = dict(budget=BUDGET, batch_size=2, noise=0.05, seed=4)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, tuple[int, dict]]:
    """The same campaign run to its end with nothing in the way: on SQLite, its agents in this process
    (the replay world is seeded by sample and step, and the design by batch, so neither the runtime nor
    the instrument time changes what is measured)."""
    from athanor.conductor import Conductor
    from athanor.runtime import local_agents
    from athanor.spec import load_campaign

    folder = tmp_path_factory.mktemp("reference")
    spec = load_campaign(pg_campaign(folder / "c.yaml", None, **OUTAGE_CAMPAIGN))
    store = Store(f"sqlite:///{folder}/campaign.db", "reference-0001")
    try:
        store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
        status = asyncio.run(Conductor(spec, store, local_agents(spec, store.campaign_id, store.url)).run())
        assert status == "completed" and store.count_events("measurement") == BUDGET
        return {s["id"]: (s["pool_index"], s["values"]) for s in store.samples()}
    finally:
        store.close()


def stop_when_measured(pg_server, process, out: Path, n: int = 3) -> None:
    wait_measured(out, n)
    assert process.poll() is None, "the campaign ended before the outage"
    pg_server.stop("fast")


def assert_measured_once(out: Path, reference: dict[str, tuple[int, dict]]) -> None:
    found, n_measured, _ = outcome(out)
    assert n_measured == BUDGET
    assert sorted(found) == [f"S{i:04d}" for i in range(1, BUDGET + 1)]
    assert Counter(row for row, _ in found.values()).most_common(1)[0][1] == 1
    assert all(math.isfinite(v) for _, values in found.values() for v in values.values())
    assert found == reference


@pytest.mark.slow
def test_postgres_back_within_the_retry_window(tmp_path, ray_address, pg_server, uninterrupted):
    config = pg_campaign(tmp_path / "c.yaml", pg_server.create_database(), retry_s=60, latency_s=0.3,
                         **OUTAGE_CAMPAIGN)
    out = tmp_path / "run"
    with reaped(start_run(config, out, ray_address)) as process:
        try:
            stop_when_measured(pg_server, process, out)
            time.sleep(5)
            assert process.poll() is None, "the campaign should wait for the store"
        finally:
            pg_server.start()
        _, stderr, _ = finish(process)
    assert process.returncode == 0, stderr
    assert "the store is unreachable" in stderr, stderr
    assert "athanor: error" not in stderr and "Traceback" not in stderr, stderr
    store, _ = open_run(out)
    try:
        events = store.events(kind="campaign_event")
        assert [e.event for e in events] == ["started", "ended"] and events[-1].status == "completed"
    finally:
        store.close()
    assert_measured_once(out, uninterrupted)


@pytest.mark.slow
def test_postgres_down_past_the_retry_window_then_resume(tmp_path, ray_address, pg_server, uninterrupted):
    # A synthesis cut off by the outage is run again on resume (by default it would wait for an operator).
    instruments = ("instruments:\n  - {name: synthesizer, role: synthesis, on_interrupted: retry}\n"
                   "  - {name: probe, role: characterization}\n")
    config = pg_campaign(tmp_path / "c.yaml", pg_server.create_database(), retry_s=3, extra=instruments,
                         latency_s=0.3, **OUTAGE_CAMPAIGN)
    out = tmp_path / "run"
    with reaped(start_run(config, out, ray_address)) as first:
        try:
            stop_when_measured(pg_server, first, out)
            _, stderr, took = finish(first, timeout=60)
        finally:
            pg_server.start()
    assert first.returncode == 2, stderr
    assert "the store is unreachable" in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("athanor: error:")]
    assert len(errors) == 1 and "unreachable for 3 s" in errors[0] and "--resume" in errors[0], stderr
    for text in ("SELECT", "INSERT", "UPDATE", "[SQL:", "Traceback", "psycopg"):
        assert text not in stderr, stderr
    assert took < 30, f"the campaign took {took:.0f} s to give up on a 3 s window"

    with reaped(start_run(config, out, ray_address, "--resume")) as resumed:
        _, stderr, _ = finish(resumed)
    assert resumed.returncode == 0, stderr
    assert "unreachable" not in stderr, stderr
    # The stopped conductor could not release its lease (the store was down); its process is gone, so
    # the resume takes the lease over at once, and says so in the log.
    store, _ = open_run(out)
    try:
        events = store.events(kind="campaign_event")
        assert [e.event for e in events] == ["started", "lease_taken_over", "resumed", "ended"]
        assert events[1].detail["why"] == "its process is gone" and events[1].detail["pid"] == first.pid
        assert events[-1].status == "completed"
    finally:
        store.close()
    assert_measured_once(out, uninterrupted)
