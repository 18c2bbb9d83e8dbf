"""Chaos: a campaign killed with SIGKILL (its whole process group, as a power cut would) at several
points, one of them while a synthesis runs at the instrument, and resumed each time.

Nothing measured is lost, no run is started twice under one idempotency key, a step is run again only
after it was marked interrupted and an operator allowed it (synthesis) or the policy did
(characterization), and the results equal those of an uninterrupted run with the same seed. A second
conductor on a campaign that is running refuses, naming the holder.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from athanor.campaign import open_run
from athanor.cli import main as cli_main
from athanor.conductor import Conductor
from athanor.runtime import local_agents
from athanor.spec import load_campaign
from athanor.store import Store
from athanor.testing import answer_operator, assert_invariants
from conftest import P3HT_OBJECTIVE, write_campaign
from helpers_proc import kill, samples, start_run, wait_for

pytestmark = pytest.mark.slow
BUDGET = 8


def open_runs(out: Path, step: str) -> list[str]:
    """Keys of `step` runs whose start document is stored and whose stop is not: under way right now."""
    with sqlite3.connect(out / "campaign.db", timeout=30) as db:
        rows = db.execute("SELECT idempotency_key, run_uid, name FROM documents WHERE step = ?", (step,)).fetchall()
    started = {uid: key for key, uid, name in rows if name == "start"}
    stopped = {uid for _key, uid, name in rows if name == "stop"}
    return [key for uid, key in started.items() if uid not in stopped]


def approve_interrupted(out: Path) -> list[str]:
    """The operator: allow every interrupted synthesis that waits to run again."""
    store, spec = open_run(out)
    try:
        return answer_operator(store, spec, lambda s: True if s["interrupted"] else None, "chaos-operator")
    finally:
        store.close()


def finish(process: subprocess.Popen, out: Path, approved: list[str]) -> None:
    """Let a resumed run finish, approving interrupted syntheses as they come up."""
    while process.poll() is None:
        try:
            approved += approve_interrupted(out)
        except Exception:  # noqa: BLE001 -- the store may be busy; try again
            pass
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    assert process.returncode == 0, process.stderr.read()


def test_killed_at_any_point_loses_nothing_and_never_runs_a_key_twice(tmp_path, ray_address, capsys):
    config = write_campaign(tmp_path / "c.yaml", budget=BUDGET, batch_size=2, latency_s=0.3, noise=0.05, seed=7)
    want = reference(tmp_path, seed=7)

    out, approved, killed_during = tmp_path / "run", [], []
    process = start_run(config, out, ray_address)
    for moment, step in (("during a synthesis", "synthesize"), ("during a measurement", "characterize"),
                         ("after four measurements", None)):
        if step is not None:
            wait_for(lambda: open_runs(out, step), timeout=120, what=f"a {step} run under way")
        else:
            wait_for(lambda: sum(bool(s["values"]) for s in samples(out)) >= 4, timeout=120, what="four measurements")
        killed_during.append((moment, open_runs(out, "synthesize") + open_runs(out, "characterize")))
        kill(process)
        process = start_run(config, out, ray_address, "--resume")
        # each resumed conductor takes over the dead one's lease; let it get going before the next kill
        wait_for(lambda: _events(out).count("resumed") == len(killed_during), timeout=120, what="the resume")
    finish(process, out, approved)

    store, spec = open_run(out)
    after = store.samples()
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert_invariants(store, spec, out)  # the testing kit's checks agree with what follows
    assert [s["id"] for s in after] == [f"S{i:04d}" for i in range(1, BUDGET + 1)] == sorted(want)
    assert all(s["state"] == "learned" for s in after), [(s["id"], s["state"], s["error"]) for s in after]
    # the same campaign as without the kills: same rows, same readings (noise is seeded by sample and step)
    for s in after:
        assert s["pool_index"] == want[s["id"]]["pool_index"]
        assert s["values"][P3HT_OBJECTIVE] == pytest.approx(want[s["id"]]["values"][P3HT_OBJECTIVE], rel=1e-12)
    assert store.count_events("measurement") == BUDGET  # nothing measured twice

    interrupted = {e.idempotency_key: e for e in store.events(kind="step_interrupted")}
    operator = {a["sample_id"] for a in store.approvals() if a["decided_by"] == "chaos-operator"}
    for s in after:
        for step in ("synthesize", "characterize"):
            keys = Counter(d["idempotency_key"] for d in store.documents(s["id"])
                           if d["name"] == "start" and d["step"] == step)
            assert all(n == 1 for n in keys.values()), (s["id"], step, keys)  # no key ever started twice
            first = f"{store.campaign_id}:{s['id']}:{step}"
            assert set(keys) <= {first, f"{first}:2", f"{first}:3", f"{first}:4"}
            if len(keys) > 1:  # run again: only after it was interrupted, and allowed
                assert first in interrupted, (s["id"], step, keys)
                assert interrupted[first].action == ("ask" if step == "synthesize" else "retry")
                if step == "synthesize":
                    assert s["id"] in operator
    assert cli_main(["status", str(out), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["interrupted"] == sorted({e.sample_id for e in interrupted.values()})
    assert status["conductor"] is None  # released at the clean end
    events = _events(out)
    assert events.count("resumed") == 3 and events.count("lease_taken_over") == 3 and events[-1] == "ended"
    print("killed during:", killed_during, "interrupted:", sorted(interrupted), "approved:", approved)


def test_a_second_conductor_on_a_running_campaign_refuses(tmp_path, ray_address):
    config = write_campaign(tmp_path / "c.yaml", budget=6, batch_size=2, latency_s=0.25)
    out = tmp_path / "run"
    first = start_run(config, out, ray_address)
    wait_for(lambda: any(s["values"] for s in samples(out)), timeout=120, what="a measurement")
    second = subprocess.run([sys.executable, "-m", "athanor", "run", str(config), "--out", str(out), "--resume",
                             "--quiet", "--ray-address", ray_address], capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    [line] = second.stderr.strip().splitlines()
    assert "held by" in line and f"pid {first.pid}" in line
    assert first.wait(timeout=300) == 0
    store, _ = open_run(out)
    assert _events(out) == ["started", "ended"]  # the second never touched the campaign
    assert store.count_events("measurement") == 6


def reference(tmp_path: Path, seed: int) -> dict[str, dict]:
    """The same campaign with nothing in the way, its agents in this process and no instrument time (the
    replay world is seeded by sample and step, the design by batch: neither changes what is measured)."""
    config = write_campaign(tmp_path / "reference.yaml", budget=BUDGET, batch_size=2, noise=0.05, seed=seed)
    spec = load_campaign(config)
    store = Store(f"sqlite:///{tmp_path}/reference.db", "reference-0001")
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    assert asyncio.run(Conductor(spec, store, local_agents(spec, store.campaign_id, store.url)).run()) == "completed"
    return {s["id"]: s for s in store.samples()}


def _events(out: Path) -> list[str]:
    store, _ = open_run(out)
    try:
        return [e.event for e in store.events(kind="campaign_event") if e.event not in ("paused", "unpaused")]
    finally:
        store.close()
