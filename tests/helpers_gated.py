"""A stored campaign with proposals awaiting an operator, for the chat's and the commands' tests."""

from __future__ import annotations

import json
from pathlib import Path

from athanor.messages import (
    ApprovalDecision,
    ApprovalRequest,
    Candidate,
    DesignProposal,
    Measurement,
    Prediction,
    SynthesisRecipe,
    SynthesisResult,
)
from athanor.spec import parse_campaign
from athanor.store import Store

SPEC = """
campaign: chat-test
description: lead-free halide blend
space:
  parameters:
    - {type: continuous, name: temperature, low: 300, high: 600}
  composition:
    elements: {Sn: [0.0, 1.0], Pb: [0.0, 0.5], Ge: [0.0, 0.3]}
objectives:
  - {name: gap, direction: maximize}
budget: {experiments: 10}
batch_size: 3
approval: {policy: always}
"""
CAMP = "chat-test-0001"


def env(sample_id=None):
    return dict(campaign_id=CAMP, sender="conductor", sample_id=sample_id)


def make_gated_run(tmp_path: Path, waiting: int = 3) -> Path:
    """A stopped campaign: S0001-S0002 measured, S0003 onwards (`waiting` of them) awaiting an operator."""
    spec = parse_campaign(SPEC)
    url = f"sqlite:///{tmp_path}/campaign.db"
    store = Store(url, CAMP)
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    (tmp_path / "run.json").write_text(json.dumps({"campaign_id": CAMP, "store_url": url}))
    measured = [{"temperature": 350.0, "Sn": 0.8, "Pb": 0.2, "Ge": 0.0},
                {"temperature": 500.0, "Sn": 0.5, "Pb": 0.3, "Ge": 0.2}]
    store.append(DesignProposal(**env(), batch=0, strategy="sobol", candidates=[
        Candidate(inputs=x, sample_id=f"S000{i + 1}") for i, x in enumerate(measured)]))
    for i in (1, 2):
        sid = f"S000{i}"
        store.append(ApprovalDecision(**env(sid), approved=True, decided_by="policy:test", channel="policy"))
        store.append(SynthesisRecipe(**env(sid), route="direct", inputs=measured[i - 1]))
        store.append(SynthesisResult(**env(sid), instrument="synthesizer", product={"ok": True}))
        store.append(Measurement(**env(sid), instrument="probe", values={"gap": 1.1 + 0.2 * i}))
    first = [{"temperature": 360.0, "Sn": 0.75, "Pb": 0.25, "Ge": 0.0},
             {"temperature": 450.0, "Sn": 0.6, "Pb": 0.2, "Ge": 0.2},
             {"temperature": 580.0, "Sn": 0.5, "Pb": 0.5, "Ge": 0.0}]
    more = [{"temperature": 400.0 + 10 * i, "Sn": 0.7, "Pb": 0.3, "Ge": 0.0} for i in range(max(0, waiting - 3))]
    proposals = (first + more)[:waiting]
    store.append(DesignProposal(**env(), batch=1, strategy="bayesian", model_version="gp-1", candidates=[
        Candidate(inputs=x, sample_id=f"S{i + 3:04d}", acquisition_value=0.5 - 0.1 * i,
                  predicted={"gap": Prediction(mean=1.5 + 0.1 * i, sd=0.12)}, rationale="high expected improvement")
        for i, x in enumerate(proposals)]))
    for i in range(3, 3 + waiting):
        store.append(ApprovalRequest(**env(f"S{i:04d}"), policy="always", reason="every proposal waits"))
    store.close()
    return tmp_path


def inbox(run_dir: Path) -> list:
    """The commands posted to the gated campaign and not yet carried out."""
    store = Store(f"sqlite:///{run_dir}/campaign.db", CAMP)
    try:
        return [c for _, c in store.pending_commands()]
    finally:
        store.close()
