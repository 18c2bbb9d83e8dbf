"""What the agents that need history have been sent: each finished sample once, in a fixed order.

The designer needs every finished sample of the batches it may see, the planner's route the recipes
and outcomes of finished samples, the learner every measurement. Sending each the whole campaign per
call made a sample's cost grow with the campaign; instead each agent keeps a `History` (agents/common.py)
that the conductor extends with what is new since the last call: `{"start": position, "records": [...]}`.
An agent whose history is shorter than `start` (an actor restarted) answers `{"resync": true}` and is
sent everything again. Positions never change meaning: records are appended, never revised, and only
samples whose record can no longer change (finished, or measured) are sent.
"""

from __future__ import annotations

from typing import Any, Callable

TERMINAL = ("learned", "rejected", "failed")
FEEDS = ("designer", "planner", "learner")


def _ready(feed: str, s: dict[str, Any]) -> bool:
    """Whether a sample's record for this feed is final: finished (and planned, for the planner's
    route), or measured, for the learner."""
    finished = s["state"] in TERMINAL and not s["awaiting_approval"]
    if feed == "designer":
        return finished
    if feed == "planner":
        return finished and bool(s.get("recipe"))
    return bool(s["values"]) and s["state"] != "failed"


def observation(s: dict[str, Any]) -> dict[str, Any]:
    """A sample as a strategy sees it (planners.base.Observation)."""
    return {"inputs": s["inputs"], "values": s["values"], "pool_index": s["pool_index"],
            "failed": s["state"] in ("failed", "rejected")}


def record(feed: str, s: dict[str, Any]) -> dict[str, Any]:
    if feed == "designer":
        return {"seq": s["seq"], **observation(s)}
    if feed == "planner":
        return {"seq": s["seq"], "batch": s["batch"], "sample_id": s["id"], "recipe": s["recipe"],
                "state": s["state"], "values": s["values"]}
    return {"id": s["id"], "seq": s["seq"], "batch": s["batch"], "inputs": s["inputs"], "values": s["values"],
            "state": s["state"], "pool_index": s["pool_index"]}


class Feeds:
    def __init__(self, samples: dict[str, dict[str, Any]], open_samples: dict[str, dict[str, Any]],
                 reload: Callable[[], list[dict[str, Any]]]):
        self.samples, self.open = samples, open_samples  # the conductor's memory, shared
        self.reload = reload  # every sample as the store has it: for an agent that lost count (rare)
        self.next_batch = 0
        self.sent: dict[str, list[str]] = {f: [] for f in FEEDS}  # sample ids, in the order agents got them
        self.cursor: dict[str, int] = {f: 0 for f in FEEDS}
        # Records made when a sample is final, kept only until sent: the conductor keeps no recipes.
        self.ready: dict[str, dict[str, dict[str, Any]]] = {f: {} for f in FEEDS}  # may be sent, not yet queued
        self.unsent: dict[str, list[dict[str, Any]]] = {f: [] for f in FEEDS}

    def saw(self, s: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        """Called for every sample the conductor loads or changes (`old`: as it was before)."""
        self.next_batch = max(self.next_batch, s["batch"] + 1)
        for feed in FEEDS:
            if _ready(feed, s) and not (old is not None and _ready(feed, old)):  # it just became ready
                self.ready[feed][s["id"]] = record(feed, s)

    def _queue(self, feed: str, ids: list[str]) -> None:
        for sample_id in sorted(ids, key=lambda i: self.samples[i]["seq"]):
            self.unsent[feed].append(self.ready[feed].pop(sample_id))
            self.sent[feed].append(sample_id)

    def design_history(self, cutoff: int) -> tuple[int, list[dict[str, Any]]]:
        """Queue for the designer the finished samples of batches ≤ cutoff and every rejected one; return
        how many it will know, and the samples it must treat as pending (all others)."""
        self._queue("designer", [i for i in self.ready["designer"]
                                 if self.samples[i]["batch"] <= cutoff or self.samples[i]["state"] == "rejected"])
        pending = {**self.open, **{i: self.samples[i] for i in self.ready["designer"]}}
        return len(self.sent["designer"]), sorted(pending.values(), key=lambda s: s["seq"])

    def next(self, feed: str) -> dict[str, Any]:
        """What is new for this agent since the last call (and, for the planner and learner, queue all ready)."""
        if feed != "designer":
            self._queue(feed, list(self.ready[feed]))
        start, records = self.cursor[feed], self.unsent[feed]
        self.cursor[feed], self.unsent[feed] = len(self.sent[feed]), []
        return {"start": start, "records": records}

    def everything(self, feed: str) -> dict[str, Any]:
        stored = {s["id"]: s for s in self.reload()}
        self.cursor[feed], self.unsent[feed] = len(self.sent[feed]), []
        return {"start": 0, "records": [record(feed, stored[i]) for i in self.sent[feed]]}
