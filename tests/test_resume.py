"""A campaign killed mid-run resumes from its store with no lost or repeated measurement."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from athanor.campaign import open_run
from conftest import P3HT_OBJECTIVE, write_campaign
from helpers_proc import kill, samples, start_run, wait_for

pytestmark = pytest.mark.slow


def test_kill_and_resume_loses_and_repeats_nothing(tmp_path, ray_address):
    config = write_campaign(tmp_path / "c.yaml", budget=16, batch_size=2, latency_s=0.25, noise=0.05)
    # unattended: a synthesis the kill interrupts is run again by policy (the default asks an operator,
    # as test_chaos.py exercises)
    config.write_text(config.read_text() + "instruments:\n  - {name: synthesizer, role: synthesis, on_interrupted: retry}\n"
                      "  - {name: probe, role: characterization}\n")
    out = tmp_path / "run"
    first = start_run(config, out, ray_address)
    wait_for(lambda: sum(bool(s["values"]) for s in samples(out)) >= 5, what="five measurements")
    kill(first)

    before = {s["id"]: s for s in samples(out)}
    measured_before = {k: s["values"] for k, s in before.items() if s["values"]}
    in_flight = [k for k, s in before.items() if s["state"] in ("approved", "planned", "synthesized")]
    assert 5 <= len(measured_before) < 16
    assert in_flight, "the kill should catch samples in the lab"

    second = start_run(config, out, ray_address, "--resume")
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr

    store, _ = open_run(out)
    after = store.samples()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["n_experiments"] == 16
    assert [s["id"] for s in after] == [f"S{i:04d}" for i in range(1, 17)]
    assert all(s["state"] == "learned" for s in after)
    # Nothing measured before the crash changed, and nothing was measured twice.
    for sample_id, values in measured_before.items():
        assert next(s for s in after if s["id"] == sample_id)["values"] == values
    assert store.count_events("measurement") == 16
    assert len({s["pool_index"] for s in after}) == 16
    # The samples caught in flight were finished after the resume, from their last logged step.
    assert all(next(s for s in after if s["id"] == k)["values"] for k in in_flight)
    # A run was started again only under a new key, after its first was found interrupted.
    interrupted = {e.idempotency_key for e in store.events(kind="step_interrupted")}
    for s in after:
        keys = [d["idempotency_key"] for d in store.documents(s["id"]) if d["name"] == "start"]
        assert len(keys) == len(set(keys)), keys
        assert all(k.count(":") == 2 or k.rsplit(":", 1)[0] in interrupted for k in keys), keys
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 16 and results[P3HT_OBJECTIVE].notna().all()
    events = store.events(kind="campaign_event")
    # the killed conductor's lease was taken over at once (its process is gone), and that is logged
    assert [e.event for e in events] == ["started", "lease_taken_over", "resumed", "ended"]
    assert events[1].detail["pid"] == first.pid and events[1].detail["why"] == "its process is gone"


def test_resume_after_a_clean_stop_extends_the_budget(tmp_path, ray_address):
    config = write_campaign(tmp_path / "c.yaml", budget=4, batch_size=2)
    out = tmp_path / "run"
    process = start_run(config, out, ray_address)
    assert process.wait(timeout=300) == 0
    first = {s["id"]: s["values"] for s in samples(out)}
    process = start_run(config, out, ray_address, "--resume", "--max-experiments", "6")
    assert process.wait(timeout=300) == 0
    after = samples(out)
    assert len(after) == 6
    assert {s["id"]: s["values"] for s in after if s["id"] in first} == first
    assert json.loads((out / "summary.json").read_text())["n_experiments"] == 6
