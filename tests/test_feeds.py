"""The agents' history, sent once per sample: what an agent ends up with equals what the whole campaign
holds, whether it got it piece by piece, out of order, or all again after it restarted."""

from __future__ import annotations

from athanor.agents.common import History
from athanor.feeds import Feeds, record


def sample(i: int, state: str, batch: int, values: dict | None = None) -> dict:
    return {"id": f"S{i:04d}", "seq": i, "batch": batch, "state": state, "awaiting_approval": False,
            "inputs": {"x": float(i)}, "pool_index": i, "values": values or {}, "recipe": {"route": "r", "n": i},
            "error": None}


def test_each_finished_sample_is_sent_once_in_sample_order_and_a_restarted_agent_gets_all_again():
    samples: dict[str, dict] = {}
    store: list[dict] = []
    feeds = Feeds(samples, {}, lambda: list(store))

    def finish(s):
        samples[s["id"]] = s
        store.append(s)
        feeds.saw(s)

    agent = History()
    for i in (2, 1, 0):  # finished out of order
        finish(sample(i, "learned", 0, {"y": float(i)}))
    first = feeds.next("planner")
    assert first["start"] == 0 and [r["sample_id"] for r in first["records"]] == ["S0000", "S0001", "S0002"]
    assert agent.take(first)
    assert feeds.next("planner") == {"start": 3, "records": []}  # nothing is sent twice
    finish(sample(3, "failed", 1))
    later = feeds.next("planner")
    assert later["start"] == 3 and [r["sample_id"] for r in later["records"]] == ["S0003"]
    assert agent.take(later) and [r["sample_id"] for r in agent.records] == ["S0000", "S0001", "S0002", "S0003"]

    restarted = History()  # an actor that was restarted has nothing: it must ask for everything
    finish(sample(4, "learned", 1, {"y": 4.0}))
    assert not restarted.take(feeds.next("planner"))
    assert restarted.take(feeds.everything("planner"))
    assert restarted.records == [record("planner", s) for s in sorted(store, key=lambda s: s["seq"])]
    assert agent.take(feeds.everything("planner")) and len(agent.records) == 5  # everything replaces, never doubles


def test_the_designer_knows_finished_samples_only_from_batches_it_may_see():
    samples: dict[str, dict] = {}
    open_: dict[str, dict] = {}
    feeds = Feeds(samples, open_, lambda: [])
    for i, (state, batch) in enumerate([("learned", 0), ("learned", 1), ("rejected", 2), ("planned", 2)]):
        s = sample(i, state, batch)
        samples[s["id"]] = s
        if state == "planned":
            open_[s["id"]] = s
        feeds.saw(s)
    known, pending = feeds.design_history(cutoff=0)
    # batch 0 is seen; a rejection is seen whatever its batch; batch 1 and the sample in the lab are pending
    assert known == 2 and [r["seq"] for r in feeds.next("designer")["records"]] == [0, 2]
    assert [s["id"] for s in pending] == ["S0001", "S0003"]
    assert feeds.next_batch == 3
