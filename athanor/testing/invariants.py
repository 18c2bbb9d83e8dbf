"""What must hold of any campaign, read from its store and run folder alone.

Each check returns a `Check`: its name, what it asks, and one line per violation (none: it holds). The
dry run (`athanor dry-run`) reports them and writes one JUnit test case each; a lab's own tests call
`assert_invariants` (or one `check_*`) on a campaign they ran. They trust nothing but the event log, the
Bluesky documents the instruments stored and the files a run wrote, so they hold the conductor to what
it promises instead of re-reading its own bookkeeping.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from event_model import DocumentNames, schema_validators
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from athanor.documents import decode_nonfinite
from athanor.lifecycle import TERMINAL
from athanor.messages import PROTOCOL_VERSION, parse_message
from athanor.spec import Campaign
from athanor.store import Store
from athanor.tables import DocumentRow, EventRow

INSTRUMENT_STEPS = ("synthesize", "characterize")


@dataclass
class Check:
    name: str
    question: str
    violations: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.violations


class InvariantViolation(AssertionError):
    """A campaign broke what Athanor promises; the message lists every violation."""


@dataclass
class CampaignLog:
    """The raw log and documents of one campaign, read once for every check."""

    events: list[tuple[int, str, str | None, dict[str, Any]]]  # seq, kind, sample id, body
    documents: list[dict[str, Any]]  # name, doc, idempotency_key, step, sample_id, run_uid

    @classmethod
    def read(cls, store: Store) -> CampaignLog:
        with Session(store.engine) as s:
            events = [(seq, kind, sample_id, body) for seq, kind, sample_id, body in s.execute(
                select(EventRow.seq, EventRow.kind, EventRow.sample_id, EventRow.body)
                .where(EventRow.campaign_id == store.campaign_id).order_by(EventRow.seq))]
            documents = [{"name": r.name, "doc": decode_nonfinite(r.body, r.nonfinite), "idempotency_key": r.idempotency_key,
                          "step": r.step, "sample_id": r.sample_id, "run_uid": r.run_uid}
                         for r in s.scalars(select(DocumentRow).where(DocumentRow.campaign_id == store.campaign_id)
                                            .order_by(DocumentRow.id))]
        return cls(events, documents)

    def bodies(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        return [(seq, body) for seq, k, _, body in self.events if k == kind]

    def runs(self) -> dict[str, dict[str, Any]]:
        """run uid -> its start document, with the key and step the instrument streamed it under."""
        return {d["doc"]["uid"]: d for d in self.documents if d["name"] == "start"}


def check_finished(log: CampaignLog) -> Check:
    check = Check("campaign_finished", "the campaign ran to its end and logged how it ended")
    ended = [body for _, body in log.bodies("campaign_event") if body.get("event") == "ended"]
    if not ended:
        check.violations.append("the log holds no 'ended' event: the campaign never finished")
    elif ended[-1].get("status") not in ("completed", "target_met", "stalled", "exhausted"):
        check.violations.append(f"the campaign ended {ended[-1].get('status')}: {ended[-1].get('detail', {}).get('reason')}")
    return check


def check_setpoints(log: CampaignLog) -> Check:
    check = Check("setpoints_within_limits", "every setpoint a plan sent was within its device's limits")
    for _, body in log.bodies("fault"):
        for violation in body.get("limit_violations") or []:
            check.violations.append(f"{body.get('sample_id')} {body.get('step')}: {violation}")
    return check


def check_exactly_once(log: CampaignLog) -> Check:
    """No key ran twice, no result was counted twice, and a step ran again only under a new key after
    its earlier run was judged interrupted."""
    check = Check("steps_exactly_once", "every instrument step ran once per idempotency key, and its result "
                  "was logged once")
    runs = log.runs()
    ended = {d["doc"].get("run_start"): d["doc"].get("exit_status") for d in log.documents if d["name"] == "stop"}
    by_key: dict[str, list[str]] = defaultdict(list)
    for uid, d in runs.items():
        if d["idempotency_key"]:
            by_key[d["idempotency_key"]].append(uid)
    for key, uids in sorted(by_key.items()):
        # A measurement the control system lost mid-run is measured again under its key (agents/instrument.py);
        # anything else, or an earlier run that finished, is a step done twice.
        again = runs[uids[0]]["step"] == "characterize" and all(ended.get(u) != "success" for u in uids[:-1])
        if len(uids) > 1 and not again:
            check.violations.append(f"{key}: {len(uids)} runs started under one key")
    starts = by_key
    intended = {body["idempotency_key"] for _, body in log.bodies("step_intent")}
    check.violations += [f"{key}: a run started with no intent logged for it" for key in sorted(set(starts) - intended)]
    interrupted = {body["idempotency_key"] for _, body in log.bodies("step_interrupted")}
    for _, body in log.bodies("step_intent"):
        if body.get("attempt", 1) > 1:
            before = body["idempotency_key"].rsplit(":", 1)[0] + (f":{body['attempt'] - 1}" if body["attempt"] > 2 else "")
            if before not in interrupted:
                check.violations.append(f"{body['idempotency_key']}: attempt {body['attempt']} began, but {before} "
                                        "was never judged interrupted")
    for kind in ("synthesis_result", "measurement"):
        counts = Counter(body.get("sample_id") for _, body in log.bodies(kind))
        check.violations += [f"{sample}: {n} {kind.replace('_', ' ')}s logged" for sample, n in counts.items() if n > 1]
    return check


def check_nothing_lost(log: CampaignLog, store: Store, measured_before: Iterable[dict[str, dict[str, float]]] = ()) -> Check:
    """Every proposal became a sample that reached an end, and every value measured before a crash is
    still there, unchanged. `measured_before`: snapshots (sample id -> values) taken at each crash."""
    check = Check("no_sample_lost", "every proposed sample reached an end (learned, failed or rejected) and no "
                  "measurement was lost or changed")
    samples = {s["id"]: s for s in store.samples()}
    proposed = [c.get("sample_id") for _, body in log.bodies("design_proposal") for c in body.get("candidates", [])]
    check.violations += [f"{sid}: proposed, but no such sample" for sid in proposed if sid not in samples]
    ended = [body for _, body in log.bodies("campaign_event") if body.get("event") == "ended"]
    stopped_early = bool(ended) and ended[-1].get("status") != "completed"  # proposals left undecided are kept
    for sid, s in samples.items():
        if stopped_early and s["state"] == "proposed":
            continue
        if s["state"] not in TERMINAL or s["awaiting_approval"]:
            waiting = " (awaiting an operator)" if s["awaiting_approval"] else ""
            check.violations.append(f"{sid}: left {s['state']}{waiting}")
        elif s["state"] == "learned" and not s["values"]:
            check.violations.append(f"{sid}: learned, but no measurement is stored")
    for snapshot in measured_before:
        for sid, values in snapshot.items():
            now = samples.get(sid, {}).get("values")
            if now != values:
                check.violations.append(f"{sid}: measured {values} before a crash, {now or 'nothing'} now")
    return check


def check_judged(log: CampaignLog) -> Check:
    """An instrument step for a sample only after an approval of it; a rejected sample never at one."""
    check = Check("proposals_judged_before_instruments", "every sample was approved (by the policy or an operator) "
                  "before any instrument step, an interrupted one again before it ran again, and no rejected "
                  "sample reached an instrument")
    approved: dict[str, bool] = {}  # sample -> may go to an instrument now
    ever: set[str] = set()
    failed: set[str] = set()
    for seq, kind, sid, body in log.events:
        if kind == "approval_decision" and sid is not None:
            # an operator's edit is judged again; a decision on a failed sample changes nothing
            approved[sid] = bool(body.get("approved")) and body.get("edited_inputs") is None and sid not in failed
            ever.update([sid] if approved[sid] else [])
        elif kind == "step_interrupted" and body.get("action") != "retry":
            approved[sid] = False  # "ask": a new run needs an operator's approval; "fail": none may follow
            failed.update([sid] if body.get("action") == "fail" else [])
        elif kind == "step_intent" and body.get("step") in INSTRUMENT_STEPS and not approved.get(sid):
            check.violations.append(f"{sid}: {body['step']} began (log #{seq}) before it was approved"
                                    + (" (after its interruption)" if sid in ever else ""))
    rejected = {sid for sid, ok in approved.items() if not ok and sid not in ever}
    at_instruments = {d["sample_id"] for d in log.documents}
    check.violations += [f"{sid}: rejected, yet an instrument ran for it" for sid in sorted(rejected & at_instruments)]
    return check


def check_messages(log: CampaignLog) -> Check:
    check = Check("messages_valid", f"every logged message validates against the protocol (version {PROTOCOL_VERSION})")
    for seq, kind, _, body in log.events:
        try:
            message = parse_message(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            check.violations.append(f"log #{seq} ({kind}): {where}: {first['msg']}")
            continue
        if message.kind != kind or message.protocol != PROTOCOL_VERSION:
            check.violations.append(f"log #{seq}: stored as {kind}, reads as {message.kind} v{message.protocol}")
    return check


def check_documents(log: CampaignLog) -> Check:
    check = Check("documents_valid", "every Bluesky document an instrument stored validates against event-model's schema")
    for d in log.documents:
        try:
            schema_validators[DocumentNames[d["name"]]].validate(d["doc"])
        except Exception as exc:  # noqa: BLE001 -- jsonschema's error, or an unknown document name
            check.violations.append(f"{d['sample_id']} {d['name']} of run {d['run_uid'][:8]}: "
                                    f"{str(exc).splitlines()[0][:200]}")
    return check


def check_budget(store: Store, spec: Campaign) -> Check:
    check = Check("budget_respected", "no more experiments than the budget")
    used = sum(s["state"] not in ("proposed", "rejected") for s in store.samples())
    if used > spec.budget.experiments:
        check.violations.append(f"{used} experiments run, budget {spec.budget.experiments}")
    return check


def check_outputs(store: Store, out: Path) -> Check:
    check = Check("outputs_written", "summary.json, results.csv and plots/progress.png were written and agree "
                  "with the store")
    missing = [name for name in ("summary.json", "results.csv", "plots/progress.png") if not (out / name).is_file()]
    check.violations += [f"{out / name} is missing" for name in missing]
    if missing:
        return check
    samples = store.samples()
    table = pd.read_csv(out / "results.csv")
    if sorted(table["sample_id"]) != sorted(s["id"] for s in samples):
        check.violations.append(f"results.csv has {len(table)} rows, the store {len(samples)} samples")
    summary = json.loads((out / "summary.json").read_text())
    measured = sum(bool(s["values"]) for s in samples)
    if summary.get("n_measured") != measured:
        check.violations.append(f"summary.json says {summary.get('n_measured')} measured, the store {measured}")
    return check


def check_campaign(store: Store, spec: Campaign, out: Path | None = None,
                   measured_before: Iterable[dict[str, dict[str, float]]] = (),
                   log: CampaignLog | None = None) -> list[Check]:
    """Every invariant of a finished campaign (the outputs too when its run folder `out` is given);
    `log`: the campaign's log when the caller has read it already."""
    log = log or CampaignLog.read(store)
    checks = [check_finished(log), check_setpoints(log), check_exactly_once(log),
              check_nothing_lost(log, store, measured_before), check_judged(log), check_messages(log),
              check_documents(log), check_budget(store, spec)]
    if out is not None:
        checks.append(check_outputs(store, Path(out)))
    return checks


def assert_invariants(store: Store, spec: Campaign, out: Path | None = None, skip: Iterable[str] = ()) -> None:
    """Raise `InvariantViolation` listing every broken invariant (except the checks named in `skip`)."""
    failed = [c for c in check_campaign(store, spec, out) if not c.passed and c.name not in set(skip)]
    if failed:
        raise InvariantViolation("\n".join(f"{c.name}: {v}" for c in failed for v in c.violations))


def step_times(store: Store, log: CampaignLog | None = None) -> dict[str, list[float]]:
    """Seconds each step took: instrument steps from their runs' start and stop documents, design from
    each request to its proposal, learning from a measurement to its model update."""
    log = log or CampaignLog.read(store)
    times: dict[str, list[float]] = defaultdict(list)
    starts = log.runs()
    for d in log.documents:
        start = starts.get(d["doc"].get("run_start")) if d["name"] == "stop" else None
        if start is not None and start["step"]:
            times[start["step"]].append(float(d["doc"]["time"]) - float(start["doc"]["time"]))
    stamps = [(kind, sid, pd.Timestamp(body["created_at"])) for _, kind, sid, body in log.events]
    asked = None
    measured: dict[str, pd.Timestamp] = {}
    for kind, sid, at in stamps:
        if kind == "design_request":
            asked = at
        elif kind == "design_proposal" and asked is not None:
            times["design"].append((at - asked).total_seconds())
            asked = None
        elif kind == "measurement" and sid is not None:
            measured[sid] = at
        elif kind == "model_update" and sid in measured:
            times["learn"].append((at - measured.pop(sid)).total_seconds())
    return dict(times)
