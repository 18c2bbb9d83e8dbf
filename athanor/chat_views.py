"""What the chat shows: a campaign's state, the proposals waiting and why one was proposed.

Read-only, and written for a model as much as for a person: free text that people wrote (reasons,
their messages) comes fenced as quoted data (`fence`), never as something to obey."""

from __future__ import annotations

import math
from typing import Any, Mapping

from athanor.commands import OperatorCommand, posted_decisions
from athanor.lifecycle import MEASURED
from athanor.report import decision_line, fmt, inputs_text, recipe_lines
from athanor.spec import Campaign, CategoricalParameter
from athanor.store import Store


def fence(text: str) -> str:
    """Free text someone wrote, marked as data for a model: it is quoted, never obeyed."""
    return "⟦quoted: " + str(text).replace("⟦", "[").replace("⟧", "]") + "⟧"


def status_text(store: Store, spec: Campaign) -> str:
    samples = store.samples()
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    events = store.events(kind="campaign_event")
    status = events[-1].status if events and events[-1].event == "ended" else "running or interrupted"
    lines = [f"campaign {spec.campaign} ({store.campaign_id}): {status}",
             "samples: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet")]
    waiting = [s["id"] for s in samples if s["awaiting_approval"]]
    lines.append("awaiting approval: " + (" ".join(waiting) or "none"))
    controls = store.controls()
    lines.append(f"{'PAUSED; ' if controls['paused'] else ''}batch size {controls['batch_size'] or spec.batch_size}")
    posted = posted_decisions(store)
    if posted:
        lines.append("decisions waiting for the conductor: " + ", ".join(f"{a} {i}" for i, a in posted.items()))
    lines += ["  " + decision_line(a, fence) for a in store.approvals() if a["channel"] != "policy"][-5:]
    lines += [f"  refused: {fence(error)}" for error in store.refused_commands()[-3:]]
    return "\n".join(lines)


def prediction_text(candidate: dict[str, Any]) -> str:
    predicted = candidate.get("predicted") or {}
    parts = [f"{name} {fmt(p['mean'])} ± {fmt(p['sd'])}" for name, p in predicted.items()]
    return "predicted " + ", ".join(parts) if parts else "no prediction (the designer had no model yet)"


def pending_text(store: Store) -> str:
    posted = posted_decisions(store)
    asked = store.waiting_reasons()
    waiting = [s for s in store.samples() if s["awaiting_approval"]]
    if not waiting:
        return "no candidates are awaiting approval"
    lines = []
    for s in waiting:
        note = f" [{posted[s['id']]} posted, waiting for the conductor]" if s["id"] in posted else ""
        cost = (s["recipe"] or {}).get("cost_usd")
        hazards = sorted({h for flags in ((s["recipe"] or {}).get("hazards") or {}).values() for h in flags})
        lines.append(f"{s['id']} (batch {s['batch']}): {inputs_text(s['inputs'])}; "
                     f"{prediction_text(s['candidate'])}"
                     + (f"; precursors ${cost:.2f}" if cost is not None else "")
                     + (f"; hazards: {', '.join(hazards)}" if hazards else "")
                     + (f"; asks because: {asked[s['id']]}" if asked.get(s["id"]) else "") + note)
    return f"{len(waiting)} awaiting approval:\n" + "\n".join(lines)


def neighbours(store: Store, spec: Campaign, sample: dict[str, Any], k: int = 3) -> list[tuple[float, dict[str, Any]]]:
    spans: dict[str, float] = {p.name: float(p.high - p.low) or 1.0 for p in spec.space.parameters
                               if not isinstance(p, CategoricalParameter)}

    def distance(other: dict[str, Any]) -> float:
        total = 0.0
        for name, value in sample["inputs"].items():
            theirs = other["inputs"].get(name)
            if isinstance(value, (int, float)) and isinstance(theirs, (int, float)):
                total += ((value - theirs) / spans.get(name, 1.0)) ** 2
            else:
                total += 0.0 if value == theirs else 1.0
        return math.sqrt(total)

    measured = [s for s in store.samples(MEASURED) if s["id"] != sample["id"]]
    return sorted(((distance(s), s) for s in measured), key=lambda pair: pair[0])[:k]


def explain_text(store: Store, spec: Campaign, s: dict[str, Any]) -> str:
    c = s["candidate"]
    lines = [f"{s['id']} ({s['state']}{', awaiting approval' if s['awaiting_approval'] else ''}), "
             f"batch {s['batch']}: {inputs_text(s['inputs'])}",
             prediction_text(c)]
    if c.get("acquisition_value") is not None:
        lines.append(f"acquisition value {fmt(c['acquisition_value'])}")
    if c.get("rationale"):
        lines.append(f"rationale: {c['rationale']}")
    if c.get("edited_from"):
        lines.append(f"edited by an operator from {inputs_text(c['edited_from'])} (the prediction was for those)")
    if s["values"]:
        lines.append("measured: " + inputs_text(s["values"]))
    near = neighbours(store, spec, s)
    if near:
        lines.append("nearest measured neighbours:")
        lines += [f"  {n['id']} (distance {d:.3g}): {inputs_text(n['inputs'])} -> {inputs_text(n['values'])}"
                  for d, n in near]
    else:
        lines.append("no measured samples yet to compare with")
    lines += recipe_lines(s.get("recipe"))
    if s.get("error"):
        lines.append(f"note: {s['error']}")
    return "\n".join(lines)


def describe(staged: list[OperatorCommand]) -> str:
    """Staged commands as the operator is asked to confirm them: the exact list, grouped."""
    return _phrases(staged, {"approve": "approve", "reject": "reject", "edit": "revise"})


def past(staged: list[OperatorCommand]) -> str:
    return _phrases(staged, {"approve": "approved", "reject": "rejected", "edit": "revised"}, posted=True)


def _phrases(staged: list[OperatorCommand], verbs: Mapping[str, str], posted: bool = False) -> str:
    parts: list[str] = []
    for action in ("approve", "reject"):
        by_reason: dict[str, list[str]] = {}
        for c in staged:
            if c.action == action:
                by_reason.setdefault(c.reason, []).append(c.sample_id or "")
        parts += [f"{verbs[action]} {' '.join(ids)}" + (f" ({fence(reason)})" if reason else "")
                  for reason, ids in by_reason.items()]
    parts += [f"{verbs['edit']} {c.sample_id} to {inputs_text(c.inputs or {})}" for c in staged if c.action == "edit"]
    controls = {"pause": "pause", "resume": "resume"}
    for c in staged:
        if c.action in controls:
            parts.append(controls[c.action] + (" posted" if posted else ""))
        elif c.action == "batch_size":
            parts.append(f"set the batch size to {c.batch_size}" + (" (posted)" if posted else ""))
    return "; ".join(parts)
