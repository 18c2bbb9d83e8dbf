"""The protocol: every message kind round-trips, is frozen, strict, and described by the schema."""

from __future__ import annotations

import json
import typing
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from athanor import messages as M
from athanor.messages import (
    PROTOCOL_VERSION,
    ApprovalDecision,
    ApprovalRequest,
    CampaignEvent,
    Candidate,
    CharacterizationRequest,
    DesignProposal,
    DesignRequest,
    Fault,
    Measurement,
    ModelUpdate,
    Prediction,
    StepIntent,
    StepInterrupted,
    SynthesisRecipe,
    SynthesisRequest,
    SynthesisResult,
    json_schema,
    parse_message,
    to_wire,
)

ENV = dict(campaign_id="camp-1", sender="tester", sample_id="s-1", causation_id="cause-1",
           created_at=datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc))


def _all_kinds() -> set[str]:
    union = typing.get_args(typing.get_args(M.Message)[0])
    return {cls.model_fields["kind"].default for cls in union}


def _examples() -> list[M.BaseModel]:
    return [
        CampaignEvent(**ENV, event="ended", status="converged", detail={"n": 3, "why": ["budget"]}),
        DesignRequest(**ENV, n=4, batch=2, history_through_batch=0, n_history=2, pending_ids=["c"]),
        DesignProposal(
            **ENV, batch=1, strategy="sobol", model_version="gp-3",
            candidates=[
                Candidate(inputs={"x": 0.25, "n": 3, "solvent": "water"}, sample_id="s-1", pool_index=7,
                          acquisition_value=1.5, predicted={"y": Prediction(mean=2.0, sd=0.1)},
                          rationale="highest expected improvement"),
                Candidate(inputs={"x": 0.75, "n": 1, "solvent": "ethanol"}),
            ],
        ),
        ApprovalRequest(**ENV, policy="always", reason="policy asks a person"),
        ApprovalDecision(**ENV, approved=False, decided_by="alice", channel="chat", reason="too costly"),
        StepIntent(**ENV, step="synthesize", idempotency_key="s-1:synthesize", target="synthesizer"),
        StepInterrupted(**ENV, step="synthesize", idempotency_key="s-1:synthesize", run_uid="r0",
                        started_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc), action="ask",
                        reason="run r0 started and never finished"),
        SynthesisRequest(**ENV, inputs={"x": 0.5, "solvent": "water"}, pool_index=3, history_through_batch=1),
        SynthesisRecipe(**ENV, route="direct", inputs={"x": 0.5}, pool_index=3,
                        precursors=[{"formula": "Fe2O3", "mass_g": 1.25}],
                        steps=[{"action": "heat", "T_C": 900, "hold_h": 2.5}]),
        SynthesisResult(**ENV, instrument="synthesizer", product={"pool_index": 3}, run_uids=["r1"], duration_s=1.5),
        CharacterizationRequest(**ENV, product={"pool_index": 3}, probe="conductivity"),
        Measurement(**ENV, instrument="probe", values={"y": 1.25, "z": -3.0}, uncertainties={"y": 0.01},
                    run_uids=["r2"], duration_s=0.5),
        ModelUpdate(**ENV, model_version="gp-4", n_train=12, metrics={"rmse": 0.2}, best={"sample": "s-1"},
                    recommend_stop=True, reason="converged"),
        Fault(**ENV, step="characterize", error="probe timed out", fatal_for_sample=False),
    ]


EXAMPLES = _examples()


def test_examples_cover_every_kind():
    kinds = {m.kind for m in EXAMPLES}
    assert kinds == _all_kinds()
    assert len(kinds) == len(EXAMPLES) == 14


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_round_trip_dict(message):
    wire = to_wire(message)
    assert wire["kind"] == message.kind
    back = parse_message(wire)
    assert type(back) is type(message)
    assert back == message


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_round_trip_json_text(message):
    text = json.dumps(to_wire(message), allow_nan=False)
    back = parse_message(text)
    assert type(back) is type(message)
    assert back == message
    assert to_wire(back) == to_wire(message)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_envelope_and_protocol_version(message):
    wire = to_wire(message)
    assert wire["protocol"] == PROTOCOL_VERSION == "1.0"
    for key in ("id", "campaign_id", "sample_id", "causation_id", "sender", "created_at"):
        assert key in wire
    assert wire["campaign_id"] == "camp-1"
    assert wire["sample_id"] == "s-1"


def test_default_envelope_fields():
    a = Fault(campaign_id="c", sender="x", step="plan", error="boom")
    b = Fault(campaign_id="c", sender="x", step="plan", error="boom")
    assert a.protocol == PROTOCOL_VERSION
    assert a.id and b.id and a.id != b.id
    assert a.created_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - a.created_at) < timedelta(minutes=1)
    assert a.sample_id is None and a.causation_id is None


def test_other_protocol_version_rejected():
    wire = to_wire(EXAMPLES[0])
    wire["protocol"] = "2.0"
    with pytest.raises(ValidationError):
        parse_message(wire)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_frozen(message):
    with pytest.raises(ValidationError):
        message.sender = "mallory"
    with pytest.raises(ValidationError):
        message.campaign_id = "other"
    assert message.sender == "tester"


def test_nested_models_frozen():
    proposal = EXAMPLES[2]
    with pytest.raises(ValidationError):
        proposal.candidates[0].pool_index = 99
    with pytest.raises(ValidationError):
        proposal.candidates[0].predicted["y"].mean = 0.0
    assert proposal.candidates[0].pool_index == 7


def test_unknown_kind_rejected():
    wire = to_wire(EXAMPLES[0])
    wire["kind"] = "teleport"
    with pytest.raises(ValidationError) as info:
        parse_message(wire)
    assert "teleport" in str(info.value)


def test_missing_kind_rejected():
    wire = to_wire(EXAMPLES[-1])
    del wire["kind"]
    with pytest.raises(ValidationError):
        parse_message(wire)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_extra_field_rejected(message):
    wire = to_wire(message)
    wire["surprise"] = 1
    with pytest.raises(ValidationError) as info:
        parse_message(wire)
    assert "surprise" in str(info.value)


def test_extra_field_in_nested_candidate_rejected():
    wire = to_wire(EXAMPLES[2])
    wire["candidates"][0]["colour"] = "blue"
    with pytest.raises(ValidationError):
        parse_message(wire)


def test_extra_field_rejected_on_construction():
    with pytest.raises(ValidationError):
        Fault(campaign_id="c", sender="x", step="plan", error="boom", severity="high")


def test_missing_required_field_rejected():
    wire = to_wire(next(m for m in EXAMPLES if m.kind == "measurement"))
    del wire["instrument"]
    with pytest.raises(ValidationError):
        parse_message(wire)


def test_wrong_literal_rejected():
    wire = to_wire(EXAMPLES[4])
    wire["channel"] = "carrier pigeon"
    with pytest.raises(ValidationError):
        parse_message(wire)


def test_design_request_n_must_be_positive():
    with pytest.raises(ValidationError):
        DesignRequest(campaign_id="c", sender="x", n=0, batch=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_measurement_non_finite_value_rejected(bad):
    with pytest.raises(ValidationError) as info:
        Measurement(campaign_id="c", sender="x", instrument="probe", values={"ok": 1.0, "y": bad})
    assert "values.y" in str(info.value) and "finite" in str(info.value)


def test_measurement_nan_rejected_from_wire():
    wire = to_wire(next(m for m in EXAMPLES if m.kind == "measurement"))
    wire["values"] = {"y": float("nan")}
    with pytest.raises(ValidationError):
        parse_message(wire)
    text = json.dumps(to_wire(next(m for m in EXAMPLES if m.kind == "measurement"))).replace('"y": 1.25', '"y": NaN')
    assert "NaN" in text
    with pytest.raises(ValidationError):
        parse_message(text)


def test_no_message_carries_a_non_finite_float():
    # NaN is not JSON (PostgreSQL's JSON column refuses it), so it is refused at the source.
    with pytest.raises(ValidationError):
        ModelUpdate(campaign_id="c", sender="learner", model_version="v1", n_train=1, metrics={"r2": float("nan")})
    for message in EXAMPLES:
        json.dumps(to_wire(message), allow_nan=False)


def test_json_schema_lists_all_kinds():
    text = json_schema()
    schema = json.loads(text)
    mapping = schema["discriminator"]["mapping"]
    assert schema["discriminator"]["propertyName"] == "kind"
    assert set(mapping) == _all_kinds()
    assert len(schema["oneOf"]) == len(_all_kinds())
    for ref in mapping.values():
        name = ref.rsplit("/", 1)[-1]
        props = schema["$defs"][name]["properties"]
        assert "protocol" in props and "campaign_id" in props and "kind" in props
        assert props["protocol"].get("const", props["protocol"].get("default")) == PROTOCOL_VERSION
