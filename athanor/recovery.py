"""After a crash: every instrument step that was begun is found finished, failed or interrupted.

The conductor logged each step's intent when the instrument began it, and the instrument wrote its run's
documents into the store as they were emitted. On resume, for each sample whose next step has an intent
and no result, the documents of that intent's key decide: no start document, the step never began (the
conductor dispatches it as usual); a stop with `exit_status: success`, the run finished (its result is
recovered from the documents, nothing runs again); another stop, it failed (the sample fails, as it
would have); a start and no stop, it was *interrupted*: the instrument's `on_interrupted` policy
retries it under a new key, fails the sample, or asks an operator (approve: retry; reject: fail).
"""

from __future__ import annotations

import json
from typing import Any

from athanor.documents import run_outcome
from athanor.messages import ApprovalRequest, CampaignEvent, Fault, Message, StepIntent, StepInterrupted, SynthesisResult

INSTRUMENT_STEP = {"planned": "synthesize", "synthesized": "characterize"}


async def reconcile(conductor: Any) -> None:
    """Judge every step a crash left begun and unfinished, from the documents its instrument stored."""
    for s in list(conductor.open.values()):
        step = INSTRUMENT_STEP.get(s["state"])
        intent = conductor.intents.get((s["id"], step)) if step else None
        if intent is None or s["awaiting_approval"] or intent.idempotency_key in conductor.interrupted_keys:
            continue  # never begun (the loop dispatches it), or already judged interrupted
        outcome = run_outcome(conductor.store.step_documents(intent.idempotency_key))
        await judge(conductor, s, step, intent, outcome, f"{outcome.reason} on {intent.target}")


async def judge(conductor: Any, s: dict[str, Any], step: str, intent: StepIntent, outcome: Any,
                interrupted_because: str) -> None:
    """What a begun step's stored documents say happened to it, logged: nothing if it never started (it
    is dispatched again under the same key), its failure, its result recovered, or its interruption."""
    if outcome.state == "never_started":
        return
    if outcome.state == "failed":
        conductor._log(Fault(**conductor._env(s["id"]), step=step, error=f"{outcome.reason} (found on resume)"))
    elif outcome.state == "finished" and step == "synthesize":
        conductor._log(_recovered_synthesis(conductor, s["id"], intent, outcome))
    elif outcome.state == "finished":
        request = next(iter(conductor.store.events(s["id"], kind="characterization_request")[-1:]), None)
        await conductor._interpret(s["id"], request.id if request else None, intent.target,
                                   outcome.documents, _duration(outcome.documents))
    else:
        interrupt(conductor, s, step, intent, outcome, interrupted_because)


def _recovered_synthesis(conductor: Any, sample_id: str, intent: StepIntent, outcome: Any) -> Message:
    """The result a finished synthesis run would have returned, read from its documents."""
    start = outcome.documents[0][1]
    field = start.get("product_field")
    events = [d for n, d in outcome.documents if n == "event" and field in d.get("data", {})]
    if not events:
        return Fault(**conductor._env(sample_id), step="synthesize",
                     error=f"{outcome.reason or 'the run finished'} but its documents hold no product")
    return SynthesisResult(**conductor._env(sample_id, intent.id), instrument=intent.target,
                           product=json.loads(events[-1]["data"][field]), run_uids=[outcome.run_uid],
                           duration_s=_duration(outcome.documents))


def interrupt(conductor: Any, s: dict[str, Any], step: str, intent: StepIntent, outcome: Any, reason: str) -> None:
    """Log that a begun step did not finish, and what the instrument's `on_interrupted` policy does."""
    role = "synthesis" if step == "synthesize" else "characterization"
    spec = conductor.spec
    action = (spec.instrument_named(intent.target) or spec.instrument(role)).interrupted_policy
    conductor._log(StepInterrupted(
        **conductor._env(s["id"], intent.id), step=step, idempotency_key=intent.idempotency_key,
        run_uid=outcome.run_uid, started_at=outcome.started_at, action=action, reason=reason))
    conductor.interrupted_keys.add(intent.idempotency_key)
    if action == "ask":
        conductor._log(ApprovalRequest(
            **conductor._env(s["id"]), policy=f"on_interrupted:{action}",
            reason=f"{step} was interrupted ({reason}): approve to run it again as a new run, "
                   "reject to fail the sample"))


def quarantined(events: list[CampaignEvent]) -> dict[str, str]:
    """Instruments out of service, and why, from the campaign's events (the last word on each counts)."""
    out: dict[str, str] = {}
    for event in events:
        name = event.detail.get("instrument")
        if event.event == "instrument_quarantined":
            out[name] = str(event.detail.get("reason", ""))
        elif event.event == "instrument_restored":
            out.pop(name, None)
    return out


def _duration(documents: list[tuple[str, dict[str, Any]]]) -> float:
    times = [d["time"] for n, d in documents if n in ("start", "stop") and "time" in d]
    return max(times) - min(times) if len(times) > 1 else 0.0
