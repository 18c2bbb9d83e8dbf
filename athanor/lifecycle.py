"""The sample lifecycle, derived from the log: how each logged message changes the derived tables.

`apply` is the only place a sample's state changes; the store calls it inside the transaction that logs
the message, and `rebuild` replays the whole log through it. A message that would move a sample
backwards (or about a sample that does not exist) raises, and the transaction rolls back.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from athanor.messages import (
    ApprovalDecision,
    ApprovalRequest,
    DesignProposal,
    Fault,
    Measurement,
    Message,
    ModelUpdate,
    StepInterrupted,
    SynthesisRecipe,
    SynthesisResult,
    to_wire,
    utcnow,
)
from athanor.tables import ApprovalRow, MeasurementRow, SampleRow

# The lifecycle of a sample. `failed` and `rejected` are terminal and kept: negative results are data.
# A proposal that waits for an operator is planned first (its recipe shown with it, and judged by the
# approval rules) and goes from `proposed` straight to `planned` when approved; an operator's edit
# keeps it `proposed` with new inputs, to be planned and judged again.
TRANSITIONS: dict[str, set[str]] = {
    "proposed": {"approved", "planned", "rejected", "failed"},
    "approved": {"planned", "failed"},
    "planned": {"synthesized", "failed"},
    "synthesized": {"characterized", "failed"},
    "characterized": {"learned", "failed"},
    "learned": set(),
    "rejected": set(),
    "failed": set(),
}
TERMINAL = {"learned", "rejected", "failed"}
# Built once with bound parameters: a statement made per call costs more to build than to run.
SAMPLE = select(SampleRow).where(SampleRow.campaign_id == bindparam("campaign_id"), SampleRow.id == bindparam("sample_id"))
MEASUREMENT_OF = select(MeasurementRow).where(MeasurementRow.campaign_id == bindparam("campaign_id"),
                                              MeasurementRow.sample_id == bindparam("sample_id"))
MEASURED = {"characterized", "learned"}



def sample_dict(row: SampleRow, measurement: MeasurementRow | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "seq": row.seq,
        "batch": row.batch,
        "state": row.state,
        "inputs": dict(row.inputs),
        "pool_index": row.pool_index,
        "candidate": dict(row.candidate),
        "awaiting_approval": row.awaiting_approval,
        "recipe": row.recipe,
        "product": row.product,
        "error": row.error,
        "interrupted": row.interrupted,
        "values": dict(measurement.values) if measurement else {},
        "uncertainties": dict(measurement.uncertainties) if measurement else {},
        "measured_at": measurement.measured_at.astimezone(timezone.utc).isoformat() if measurement else None,
    }


def measurement_of(s: Session, row: SampleRow) -> MeasurementRow | None:
    if row.state not in MEASURED and row.state != "failed":  # nothing else can have one
        return None
    return s.scalar(MEASUREMENT_OF, {"campaign_id": row.campaign_id, "sample_id": row.id})


def rows_of(s: Session, m: Message) -> list[SampleRow]:
    """The samples a message is about."""
    ids = [c.sample_id for c in m.candidates] if isinstance(m, DesignProposal) else [m.sample_id]
    if not any(ids):
        return []
    return list(s.scalars(select(SampleRow).where(SampleRow.campaign_id == m.campaign_id, SampleRow.id.in_(ids))))


def _find(s: Session, campaign_id: str, sample_id: str | None) -> SampleRow:
    # Rows met in this session are kept in its `info`: a message reads its sample once, and `rebuild`,
    # which replays the whole log in one session, reads each sample once.
    known = s.info.setdefault("samples", {})
    row = known.get((campaign_id, sample_id))
    if row is None:
        row = s.scalar(SAMPLE, {"campaign_id": campaign_id, "sample_id": sample_id})
        if row is None:
            raise ValueError(f"no sample {sample_id!r} in the store")
        known[(campaign_id, sample_id)] = row
    return row


def _row(s: Session, m: Message) -> SampleRow:
    return _find(s, m.campaign_id, m.sample_id)


def _move(s: Session, campaign_id: str, sample_id: str | None, state: str, stay: bool = False,
          **fields: Any) -> SampleRow:
    row = _find(s, campaign_id, sample_id)
    if not (stay and state == row.state) and state not in TRANSITIONS[row.state]:
        raise ValueError(f"sample {sample_id} cannot go from {row.state} to {state}")
    row.state = state
    row.updated_at = utcnow()
    for key, value in fields.items():
        setattr(row, key, value)
    return row


def apply(s: Session, m: Message) -> list[SampleRow]:
    """Update the derived tables for one logged message (the only place state changes); returns the
    samples it changed."""
    if isinstance(m, DesignProposal):
        seq = s.scalar(select(func.max(SampleRow.seq)).where(SampleRow.campaign_id == m.campaign_id))
        rows = [SampleRow(
            id=c.sample_id, campaign_id=m.campaign_id, seq=(-1 if seq is None else seq) + 1 + i, batch=m.batch,
            state="proposed", inputs=dict(c.inputs), pool_index=c.pool_index,
            candidate={**c.model_dump(mode="json"), "proposal_id": m.id}, awaiting_approval=False,
            updated_at=m.created_at) for i, c in enumerate(m.candidates)]
        s.add_all(rows)
        s.info.setdefault("samples", {}).update(((m.campaign_id, r.id), r) for r in rows)
        return rows
    if isinstance(m, ApprovalRequest):  # a proposal, or an interrupted step that waits for an operator
        row = _row(s, m)
        interrupted = row.interrupted is not None and row.state in ("planned", "synthesized")
        return [_move(s, m.campaign_id, m.sample_id, row.state if interrupted else "proposed", stay=True,
                      awaiting_approval=True)]
    if isinstance(m, ApprovalDecision):
        row = _row(s, m)
        revised = m.approved and m.edited_inputs is not None
        if row.state != "proposed" and not row.awaiting_approval:
            raise ValueError(f"sample {m.sample_id} is {row.state} and waits for no decision")
        if row.state != "proposed":  # an interrupted step: approval runs it again, rejection fails the sample
            state, error = (row.state, row.error) if m.approved else \
                ("failed", f"{row.interrupted}; not run again: {m.decided_by}: {m.reason}")
        else:
            state = "rejected" if not m.approved else "proposed" if revised else \
                "approved" if row.recipe is None else "planned"
            error = None if m.approved else f"rejected by {m.decided_by}: {m.reason}"
        row = _move(s, m.campaign_id, m.sample_id, state, stay=True, awaiting_approval=False, error=error)
        if revised:  # planned and judged again; the prediction was for the designer's inputs, not these
            row.candidate = {**row.candidate, "inputs": dict(m.edited_inputs), "edited_from": row.inputs,
                             "pool_index": m.edited_pool_index, "predicted": {}, "acquisition_value": None}
            row.inputs, row.pool_index, row.recipe = dict(m.edited_inputs), m.edited_pool_index, None
        s.add(ApprovalRow(sample_id=m.sample_id, campaign_id=m.campaign_id, approved=m.approved,
                          decided_by=m.decided_by, channel=m.channel, reason=m.reason,
                          edited_inputs=m.edited_inputs, transcript=m.transcript or None, login=m.login,
                          authenticated=m.authenticated, decided_at=m.created_at, event_id=m.id))
        return [row]
    if isinstance(m, StepInterrupted):
        row = _row(s, m)
        said = f"{m.step} interrupted: {m.reason}"
        if m.action == "fail":
            return [_move(s, m.campaign_id, m.sample_id, "failed", interrupted=said, error=said)]
        return [_move(s, m.campaign_id, m.sample_id, row.state, stay=True, interrupted=said)]
    if isinstance(m, SynthesisRecipe):  # before approval it is shown with the proposal; after, it is the plan
        return [_move(s, m.campaign_id, m.sample_id, "proposed" if _row(s, m).state == "proposed" else "planned",
                      stay=True, recipe=to_wire(m))]
    if isinstance(m, SynthesisResult):
        return [_move(s, m.campaign_id, m.sample_id, "synthesized", product=dict(m.product))]
    if isinstance(m, Measurement):
        row = _move(s, m.campaign_id, m.sample_id, "characterized")
        s.add(MeasurementRow(sample_id=m.sample_id, campaign_id=m.campaign_id, instrument=m.instrument,
                             values=dict(m.values), uncertainties=dict(m.uncertainties),
                             event_id=m.id, measured_at=m.created_at))
        return [row]
    if isinstance(m, ModelUpdate) and m.sample_id is not None:
        return [_move(s, m.campaign_id, m.sample_id, "learned")]
    if isinstance(m, Fault) and m.sample_id is not None and m.fatal_for_sample:
        return [_move(s, m.campaign_id, m.sample_id, "failed", error=f"{m.step}: {m.error}")]
    return []
