"""Exactly once at the instrument, in-process: the conductor with its agents as plain objects.

A crash is made by stopping the conductor while one instrument step is under way, then leaving the
step's documents in the store as a crash at that moment would (all of them: the run finished; the
start document only: it was interrupted; none: it never began) and resuming with a new conductor.
What the store's documents say decides what resume does; it never runs a key twice.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session

from athanor import commands
from athanor.conductor import Conductor
from athanor.messages import to_wire
from athanor.pool import load_pool
from athanor.report import results_table
from athanor.runtime import InProcess, local_agents
from athanor.spec import load_campaign
from athanor.store import Store
from athanor.tables import DocumentRow
from athanor.testing import assert_invariants
from conftest import DATA, P3HT_INPUTS, P3HT_OBJECTIVE, write_campaign


class Hang(InProcess):
    """An instrument that does its step, then never answers for the chosen sample (the driver 'dies')."""

    def __init__(self, agent, sample_id):
        super().__init__(agent)
        self.sample_id, self.done = sample_id, asyncio.Event()

    def __getattr__(self, name):
        method, hang = getattr(self.agent, name), self

        class _Method:
            @staticmethod
            def remote(request, key):
                async def call():
                    reply = method(request, key)
                    if request.get("sample_id") == hang.sample_id:
                        hang.done.set()
                        await asyncio.Event().wait()
                    return reply
                return call()
        return _Method


def campaign(tmp_path: Path, *instruments: str, budget: int = 6) -> tuple[object, Store]:
    config = write_campaign(tmp_path / "c.yaml", budget=budget, batch_size=2, noise=0.05)
    if instruments:
        config.write_text(config.read_text() + "instruments:\n" + "".join(instruments))
    spec = load_campaign(config)
    store = Store(f"sqlite:///{tmp_path}/campaign.db", "eo-0001")
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    return spec, store


def crash_during(spec, store, role: str, sample_id: str) -> None:
    """Run until `sample_id`'s step at the `role` instrument has run, then stop the conductor dead."""
    agents = local_agents(spec, store.campaign_id, store.url)
    name = spec.instrument(role).name
    hang = Hang(agents.instruments[name].agent, sample_id)
    agents.instruments[name] = hang

    async def main():
        task = asyncio.create_task(Conductor(spec, store, agents).run())
        await asyncio.wait_for(hang.done.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def resume(spec, store) -> str:
    return asyncio.run(Conductor(spec, store, local_agents(spec, store.campaign_id, store.url)).run())


def keep_only(store: Store, key: str, names: tuple[str, ...]) -> None:
    """Leave of a step's documents only those a crash at that moment would have left."""
    with Session(store.engine) as s, s.begin():
        s.execute(delete(DocumentRow).where(DocumentRow.idempotency_key == key, DocumentRow.name.not_in(names)))


def _runs(store: Store, key: str) -> list[str]:
    return [d["uid"] for n, d in store.step_documents(key) if n == "start"]


def starts(store: Store, sample_id: str, step: str) -> dict[str, int]:
    """How many runs each key of a sample's step started (what an instrument actually did)."""
    counts: dict[str, int] = {}
    for d in store.documents(sample_id):
        if d["name"] == "start" and d["step"] == step:
            counts[d["idempotency_key"]] = counts.get(d["idempotency_key"], 0) + 1
    return counts


def truth(sample_id: str, store: Store) -> float:
    row = store.sample(sample_id)["pool_index"]
    return float(load_pool(DATA / "P3HT.csv", P3HT_INPUTS, [P3HT_OBJECTIVE]).iloc[row][P3HT_OBJECTIVE])


def test_an_uninterrupted_in_process_campaign_runs_each_step_once(tmp_path):
    spec, store = campaign(tmp_path)
    assert resume(spec, store) == "completed"
    assert_invariants(store, spec)
    samples = store.samples()
    assert [s["state"] for s in samples] == ["learned"] * 6
    for s in samples:
        assert starts(store, s["id"], "synthesize") == {f"eo-0001:{s['id']}:synthesize": 1}
        assert starts(store, s["id"], "characterize") == {f"eo-0001:{s['id']}:characterize": 1}
        assert s["measured_at"] is not None
        # noise 5 %: the measured value is near the dataset's, from the documents the probe stored
        assert s["values"][P3HT_OBJECTIVE] == pytest.approx(truth(s["id"], store), rel=0.3)
    table = results_table(store, spec)
    stamps = {row.sample_id: datetime.fromisoformat(row.measured_at) for row in table.itertuples()}
    assert all(t.utcoffset() == timedelta(0) for t in stamps.values())  # ISO 8601, UTC
    assert stamps == {m.sample_id: m.created_at for m in store.events(kind="measurement")}  # when it was logged
    # one intent per instrument step, logged when the instrument began it (planning and learning are
    # replayed from the log and need none)
    assert store.count_events("step_intent") == 6 * 2
    assert {e.step for e in store.events(kind="step_intent")} == {"synthesize", "characterize"}


def test_a_run_that_finished_before_the_crash_is_recovered_from_its_documents(tmp_path):
    spec, store = campaign(tmp_path)
    crash_during(spec, store, "synthesis", "S0003")
    assert store.sample("S0003")["state"] == "planned"  # the result never reached the log
    store.rebuild()
    assert resume(spec, store) == "completed"
    assert starts(store, "S0003", "synthesize") == {"eo-0001:S0003:synthesize": 1}  # not run again
    result = store.events("S0003", kind="synthesis_result")
    assert len(result) == 1 and result[0].run_uids == _runs(store, "eo-0001:S0003:synthesize")
    assert result[0].product["pool_index"] == store.sample("S0003")["pool_index"]
    assert store.sample("S0003")["state"] == "learned" and store.sample("S0003")["interrupted"] is None
    assert_invariants(store, spec)  # the testing kit agrees


def test_an_interrupted_synthesis_asks_an_operator_and_runs_again_only_when_approved(tmp_path):
    spec, store = campaign(tmp_path)
    crash_during(spec, store, "synthesis", "S0003")
    keep_only(store, "eo-0001:S0003:synthesize", ("start",))  # killed mid-run: only the start was written
    store.rebuild()

    async def operator_approves_when_asked():
        conductor = Conductor(spec, store, local_agents(spec, store.campaign_id, store.url))
        task = asyncio.create_task(conductor.run())
        while not (store.sample("S0003") or {}).get("awaiting_approval"):
            await asyncio.sleep(0.05)
        waiting = store.sample("S0003")
        assert waiting["state"] == "planned" and "synthesize interrupted" in waiting["interrupted"]
        assert "never finished" in waiting["interrupted"]
        assert starts(store, "S0003", "synthesize") == {"eo-0001:S0003:synthesize": 1}  # nothing ran meanwhile
        with pytest.raises(Exception, match="not awaiting approval|cannot be edited"):
            commands.edit(store, spec, "S0003", waiting["inputs"], "ada")
        commands.decide(store, spec, ["S0003"], True, "ada")
        return await task

    assert asyncio.run(operator_approves_when_asked()) == "completed"
    # a new run under a new key; the interrupted one is kept with its start document
    assert starts(store, "S0003", "synthesize") == {"eo-0001:S0003:synthesize": 1, "eo-0001:S0003:synthesize:2": 1}
    final = store.sample("S0003")
    assert final["state"] == "learned" and final["values"][P3HT_OBJECTIVE] == pytest.approx(truth("S0003", store), rel=0.3)
    [interrupted] = store.events("S0003", kind="step_interrupted")
    assert interrupted.action == "ask" and interrupted.idempotency_key == "eo-0001:S0003:synthesize"
    assert [a["decided_by"] for a in store.approvals() if a["sample_id"] == "S0003"] == ["policy:auto", "ada"]
    assert_invariants(store, spec)  # the testing kit agrees


def test_an_operator_who_rejects_the_retry_fails_the_sample_and_keeps_its_documents(tmp_path):
    spec, store = campaign(tmp_path, budget=4)
    crash_during(spec, store, "synthesis", "S0002")
    keep_only(store, "eo-0001:S0002:synthesize", ("start",))
    store.rebuild()
    commands_posted = []

    async def operator_rejects():
        task = asyncio.create_task(Conductor(spec, store, local_agents(spec, store.campaign_id, store.url)).run())
        while not (store.sample("S0002") or {}).get("awaiting_approval"):
            await asyncio.sleep(0.05)
        commands_posted.append(commands.decide(store, spec, ["S0002"], False, "ada", "crucible cracked"))
        return await task

    assert asyncio.run(operator_rejects()) == "completed"
    failed = store.sample("S0002")
    assert failed["state"] == "failed" and "crucible cracked" in failed["error"] and "interrupted" in failed["error"]
    assert starts(store, "S0002", "synthesize") == {"eo-0001:S0002:synthesize": 1}
    assert [d["name"] for d in store.documents("S0002")] == ["start"]
    assert_invariants(store, spec)  # the testing kit agrees


def test_an_interrupted_measurement_is_retried_by_default(tmp_path):
    spec, store = campaign(tmp_path)
    crash_during(spec, store, "characterization", "S0004")
    keep_only(store, "eo-0001:S0004:characterize", ("start",))
    store.rebuild()
    assert resume(spec, store) == "completed"
    assert starts(store, "S0004", "characterize") == {"eo-0001:S0004:characterize": 1,
                                                       "eo-0001:S0004:characterize:2": 1}
    assert store.sample("S0004")["state"] == "learned"
    assert store.events("S0004", kind="step_interrupted")[0].action == "retry"
    assert_invariants(store, spec)  # the testing kit agrees


def test_policy_fail_fails_the_sample(tmp_path):
    spec, store = campaign(tmp_path, "  - {name: furnace, role: synthesis, on_interrupted: fail}\n",
                           "  - {name: probe, role: characterization}\n", budget=4)
    crash_during(spec, store, "synthesis", "S0001")
    keep_only(store, "eo-0001:S0001:synthesize", ("start",))
    store.rebuild()
    assert resume(spec, store) == "completed"
    failed = store.sample("S0001")
    assert failed["state"] == "failed" and failed["error"].startswith("synthesize interrupted: run ")
    assert starts(store, "S0001", "synthesize") == {"eo-0001:S0001:synthesize": 1}
    assert sum(s["state"] == "learned" for s in store.samples()) == 3


def test_a_step_that_never_began_is_dispatched_under_its_key(tmp_path):
    spec, store = campaign(tmp_path)
    crash_during(spec, store, "synthesis", "S0003")
    keep_only(store, "eo-0001:S0003:synthesize", ())  # the intent is logged, the run never started
    store.rebuild()
    assert resume(spec, store) == "completed"
    assert starts(store, "S0003", "synthesize") == {"eo-0001:S0003:synthesize": 1}
    assert store.events("S0003", kind="step_interrupted") == []


def test_a_run_that_failed_before_the_crash_fails_its_sample(tmp_path):
    spec, store = campaign(tmp_path)
    crash_during(spec, store, "synthesis", "S0003")
    key = "eo-0001:S0003:synthesize"
    with Session(store.engine) as s, s.begin():  # the stop document says the run failed
        stop = s.query(DocumentRow).filter(DocumentRow.run_uid.in_(_runs(store, key)), DocumentRow.name == "stop").one()
        stop.body = {**stop.body, "exit_status": "fail", "reason": "furnace over-temperature"}
    store.rebuild()
    assert resume(spec, store) == "completed"
    failed = store.sample("S0003")
    assert failed["state"] == "failed" and "furnace over-temperature" in failed["error"]
    assert starts(store, "S0003", "synthesize") == {key: 1}


def test_the_in_process_handle_copies_arguments_as_ray_would():
    class Echo:
        def keep(self, value):
            value["changed"] = True
            return value

    given = {"a": 1}
    result = asyncio.run(InProcess(Echo()).keep.remote(given))
    assert result == {"a": 1, "changed": True} and given == {"a": 1}


def test_a_sample_costs_the_same_late_in_a_campaign_as_early(tmp_path, monkeypatch):
    """The conductor reads the samples from the store once, at start (not per loop turn or step), and
    requests name earlier samples by rule, not by copy: the last request is no bigger than the first."""
    spec, store = campaign(tmp_path, budget=16)
    reads = []
    real = Store.samples
    monkeypatch.setattr(Store, "samples", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    assert resume(spec, store) == "completed"
    assert len(reads) == 1
    for kind in ("synthesis_request", "design_request"):
        sizes = [len(json.dumps(to_wire(e))) for e in store.events(kind=kind)]
        assert len(sizes) >= 8 and max(sizes) - min(sizes) < 100, (kind, sizes)
