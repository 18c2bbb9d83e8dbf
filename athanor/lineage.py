"""Where a sample came from, and how a campaign is going: the dashboard's read models.

A sample's lineage follows it through the event log: the proposal (strategy, model version,
prediction, acquisition value) -> the decisions on it (who, through which channel, why) -> the
recipe -> the Bluesky documents of each instrument step -> the measurement.
"""

from __future__ import annotations

from typing import Any

from athanor.objectives import utility
from athanor.spec import Campaign
from athanor.store import Store


def sample_rows(store: Store) -> list[dict[str, Any]]:
    """The sample table: one row a sample, with the decision that sent it on (or stopped it)."""
    decided: dict[str, dict[str, Any]] = {}
    for a in store.approvals():
        decided[a["sample_id"]] = a  # the latest decision on each sample
    rows = []
    for s in store.samples():
        c, a = s["candidate"], decided.get(s["id"])
        rows.append({"id": s["id"], "seq": s["seq"], "batch": s["batch"], "state": s["state"],
                     "awaiting_approval": s["awaiting_approval"], "inputs": s["inputs"], "values": s["values"],
                     "predicted": c.get("predicted") or {}, "acquisition_value": c.get("acquisition_value"),
                     "cost_usd": (s["recipe"] or {}).get("cost_usd"),
                     "decision": None if a is None else {k: a[k] for k in ("approved", "decided_by", "channel",
                                                                             "reason", "decided_at")},
                     "error": s["error"], "interrupted": s["interrupted"]})
    return rows


def lineage(store: Store, sample_id: str) -> dict[str, Any] | None:
    sample = store.sample(sample_id)
    if sample is None:
        return None
    proposal = next((p for p in store.events(kind="design_proposal")
                     if any(c.sample_id == sample_id for c in p.candidates)), None)
    documents = store.documents(sample_id)
    runs: dict[str, dict[str, Any]] = {}
    for d in documents:
        run = runs.setdefault(d["run_uid"] or "?", {"run_uid": d["run_uid"], "step": d["step"],
                                                     "idempotency_key": d["idempotency_key"], "documents": []})
        run["documents"].append(d["name"])
        if d["name"] == "start":
            run["plan_name"] = d["doc"].get("plan_name")
        if d["name"] == "stop":
            run["exit_status"] = d["doc"].get("exit_status")
    c = sample["candidate"]
    return {
        "sample": sample,
        "proposal": {"batch": sample["batch"], "strategy": proposal.strategy if proposal else None,
                     "model_version": proposal.model_version if proposal else None,
                     "proposed_at": proposal.created_at.isoformat() if proposal else None,
                     "predicted": c.get("predicted") or {}, "acquisition_value": c.get("acquisition_value"),
                     "rationale": c.get("rationale"), "edited_from": c.get("edited_from")},
        "decisions": [a for a in store.approvals() if a["sample_id"] == sample_id],
        "recipe": sample["recipe"],
        "runs": list(runs.values()),
        "measurement": {"values": sample["values"], "uncertainties": sample["uncertainties"],
                        "measured_at": sample["measured_at"]} if sample["values"] else None,
        "events": [{"kind": m.kind, "at": m.created_at.isoformat(), "sender": m.sender}
                   for m in store.events(sample_id=sample_id)],
    }


def progress(store: Store, spec: Campaign) -> dict[str, Any]:
    """Each measured sample's objectives in the order measured, the best so far on the first
    objective, and the Pareto front when there are several."""
    measured = sorted((s for s in store.samples() if s["values"]), key=lambda s: (s["measured_at"] or "", s["seq"]))
    first = spec.objectives[0]
    points, best, best_id = [], None, None
    for n, s in enumerate(measured, start=1):
        value = s["values"].get(first.name)
        if value is not None and (best is None or utility(value, first) > utility(best, first)):
            best, best_id = value, s["id"]
        points.append({"n": n, "sample_id": s["id"], "values": s["values"], "best_so_far": best,
                       "best_sample": best_id})
    return {"objectives": [o.model_dump() for o in spec.objectives], "points": points,
            "pareto": pareto_front(measured, spec) if len(spec.objectives) > 1 else []}


def pareto_front(samples: list[dict[str, Any]], spec: Campaign) -> list[str]:
    """The ids of the samples no other sample beats on every objective (each read in its direction)."""
    scored = [(s["id"], [utility(s["values"][o.name], o) for o in spec.objectives]) for s in samples
              if all(o.name in s["values"] for o in spec.objectives)]

    def dominated(u: list[float]) -> bool:
        return any(all(a >= b for a, b in zip(v, u)) and any(a > b for a, b in zip(v, u)) for _, v in scored)

    return [sample_id for sample_id, u in scored if not dominated(u)]
