"""The protocol: every message the agents, instruments and conductor exchange.

Frozen pydantic models in one union discriminated by ``kind``. Each carries the envelope (who sent
it, about which sample, caused by which message, when, under which protocol version), so the event
log alone tells the campaign's whole story.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = "1.0"

InputValue = float | int | str


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Every float on the wire is finite: NaN is not JSON, and a NaN reading is a fault, not a value.
STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Envelope(BaseModel):
    model_config = STRICT

    protocol: Literal["1.0"] = PROTOCOL_VERSION
    id: str = Field(default_factory=new_id)
    campaign_id: str
    sample_id: str | None = None
    causation_id: str | None = None
    sender: str
    created_at: datetime = Field(default_factory=utcnow)


class Prediction(BaseModel):
    model_config = STRICT
    mean: float
    sd: float


class Candidate(BaseModel):
    model_config = STRICT

    inputs: dict[str, InputValue]
    sample_id: str | None = None  # assigned by the conductor when it registers the proposal
    pool_index: int | None = None
    acquisition_value: float | None = None
    predicted: dict[str, Prediction] = {}
    rationale: str = ""


class CampaignEvent(Envelope):
    """Start, resume and end of a campaign (with the status it ended in), an operator's pause, unpause or
    change of batch size (with who, through which channel, in `detail`), and an instrument that did not
    answer, was taken out of service or put back (`detail`: instrument, reason, by), and the lab a
    campaign borrows its instruments from (`lab_joined`; `detail`: lab, policy, instrument -> node)."""

    kind: Literal["campaign_event"] = "campaign_event"
    event: Literal["started", "resumed", "paused", "unpaused", "batch_size_set", "lease_taken_over", "ended",
                   "instrument_unavailable", "instrument_quarantined", "instrument_restored", "lab_joined"]
    status: str | None = None
    detail: dict[str, Any] = {}


class DesignRequest(Envelope):
    """What the designer is asked for. Its history is every finished sample of the batches up to
    `history_through_batch` (and every rejected one): a rule, not a copy, so the log stays linear."""

    kind: Literal["design_request"] = "design_request"
    n: int = Field(ge=1)
    batch: int = Field(ge=0)
    history_through_batch: int | None = None
    n_history: int | None = None
    pending_ids: list[str] = []  # in the lab or waiting: bounded by the batches in flight
    history_ids: list[str] = []  # written by versions before 0.2; kept so their logs still read


class DesignProposal(Envelope):
    kind: Literal["design_proposal"] = "design_proposal"
    batch: int = Field(ge=0)
    strategy: str
    model_version: str | None = None
    candidates: list[Candidate]


class ApprovalRequest(Envelope):
    kind: Literal["approval_request"] = "approval_request"
    policy: str
    reason: str


class ApprovalDecision(Envelope):
    kind: Literal["approval_decision"] = "approval_decision"
    approved: bool
    decided_by: str
    channel: Literal["policy", "cli", "chat", "web"]
    reason: str = ""
    edited_inputs: dict[str, InputValue] | None = None  # an operator's revision: planned and judged again
    edited_pool_index: int | None = None  # in a pool space, the row those inputs are
    transcript: dict[str, Any] = {}  # from the chat: session, transcript file, the operator's words
    login: str | None = None  # the operating-system account of the process that posted the decision
    authenticated: bool = False  # decided_by holds a token (athanor users), not just a name it gave


class StepIntent(Envelope):
    """Written when a step begins: for an instrument, when the conductor hands the step to it idle (one
    step at a time each), never while it waits in a queue. The key travels in the run's start document,
    so on resume the store tells a step that never began from one that finished or was interrupted."""

    kind: Literal["step_intent"] = "step_intent"
    step: Literal["plan", "synthesize", "characterize", "learn"]  # plan, learn: only in logs before 0.2
    idempotency_key: str
    target: str
    attempt: int = Field(default=1, ge=1)  # > 1: a retry of an interrupted step, allowed by policy or operator


class StepInterrupted(Envelope):
    """An instrument step that began (its start document is stored) and never finished: the driver died
    mid-run, or the control system lost the instrument mid-step. What follows is the instrument's `on_interrupted` policy: `retry` runs it again under a new
    key, `fail` fails the sample, `ask` waits for an operator (approve: retry; reject: fail)."""

    kind: Literal["step_interrupted"] = "step_interrupted"
    step: Literal["synthesize", "characterize"]
    idempotency_key: str
    run_uid: str | None = None
    started_at: datetime | None = None
    action: Literal["retry", "fail", "ask"]
    reason: str


class SynthesisRequest(Envelope):
    kind: Literal["synthesis_request"] = "synthesis_request"
    inputs: dict[str, InputValue]
    pool_index: int | None = None
    # The route may learn from the recipes and outcomes of finished samples of the batches up to this one
    # (the planner keeps them, sent once each): a rule, not a copy of every earlier recipe.
    history_through_batch: int | None = None
    history: list[dict[str, Any]] = []  # written by versions before 0.2; kept so their logs still read


class SynthesisRecipe(Envelope):
    kind: Literal["synthesis_recipe"] = "synthesis_recipe"
    route: str
    inputs: dict[str, InputValue]
    pool_index: int | None = None
    precursors: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    target: str | None = None
    reaction: str | None = None
    score: float | None = None
    cost_usd: float | None = None  # the precursors' cost, what an approval rule can bound
    hazards: dict[str, list[str]] = {}  # hazard flags by precursor
    details: dict[str, Any] = {}


class SynthesisResult(Envelope):
    kind: Literal["synthesis_result"] = "synthesis_result"
    instrument: str
    product: dict[str, Any]
    run_uids: list[str] = []
    duration_s: float = 0.0


class CharacterizationRequest(Envelope):
    kind: Literal["characterization_request"] = "characterization_request"
    product: dict[str, Any]
    probe: str


class Measurement(Envelope):
    kind: Literal["measurement"] = "measurement"
    instrument: str
    values: dict[str, float]
    uncertainties: dict[str, float] = {}
    run_uids: list[str] = []
    duration_s: float = 0.0


class ModelUpdate(Envelope):
    kind: Literal["model_update"] = "model_update"
    model_version: str
    n_train: int
    metrics: dict[str, float] = {}
    best: dict[str, Any] = {}
    recommend_stop: bool = False
    reason: str = ""


class Fault(Envelope):
    """Something went wrong; the sample (if any) is failed and kept, the campaign goes on."""

    kind: Literal["fault"] = "fault"
    step: str
    error: str
    fatal_for_sample: bool = True
    limit_violations: list[str] = []  # an instrument refused the step's plan before it moved anything: each setpoint beyond


Message = Annotated[
    Union[
        CampaignEvent,
        DesignRequest,
        DesignProposal,
        ApprovalRequest,
        ApprovalDecision,
        StepIntent,
        StepInterrupted,
        SynthesisRequest,
        SynthesisRecipe,
        SynthesisResult,
        CharacterizationRequest,
        Measurement,
        ModelUpdate,
        Fault,
    ],
    Field(discriminator="kind"),
]

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)


def parse_message(data: dict[str, Any] | str) -> Message:
    """Validate a message received from another process (dict or JSON)."""
    if isinstance(data, str):
        return MESSAGE_ADAPTER.validate_json(data)
    return MESSAGE_ADAPTER.validate_python(data)


def to_wire(message: BaseModel) -> dict[str, Any]:
    """The JSON-compatible form a message travels in between actors and into the store."""
    return message.model_dump(mode="json")


def json_schema() -> str:
    return json.dumps(MESSAGE_ADAPTER.json_schema(), indent=2)
