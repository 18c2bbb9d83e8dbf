"""The `rules` approval policy and the timeout with its default action."""

from __future__ import annotations

import pytest

from athanor.approval import rule_failures
from athanor.campaign import execute, open_run, prepare
from athanor.spec import ApprovalRules
from conftest import write_campaign

MEASURED = [{"inputs": {"x": 0.2, "kind": "a"}, "values": {"y": 1.0}},
            {"inputs": {"x": 0.6, "kind": "b"}, "values": {"y": 2.0}},
            {"inputs": {"x": 0.4, "kind": "a"}, "values": {"y": 1.5}}]


def candidate(x, kind="a", predicted=None):
    return {"inputs": {"x": x, "kind": kind}, "predicted": predicted or {}}


def test_rules_approve_inside_the_explored_region_and_say_why_not_outside():
    rules = ApprovalRules(min_measured=3)
    assert rule_failures(candidate(0.5), MEASURED, rules, "y") == []
    assert rule_failures(candidate(0.7), MEASURED, rules, "y") == ["x = 0.7 is outside the measured 0.2 to 0.6"]
    assert rule_failures(candidate(0.7), MEASURED, ApprovalRules(min_measured=3, margin=0.5), "y") == []
    assert rule_failures(candidate(0.5, "c"), MEASURED, rules, "y") == ["kind = 'c' was never measured"]
    assert "only 3 of the 4" in rule_failures(candidate(0.5), MEASURED, ApprovalRules(min_measured=4), "y")[0]


def test_rules_on_the_model_uncertainty():
    rules = ApprovalRules(min_measured=0, max_relative_sd=0.5)
    assert rule_failures(candidate(0.5, predicted={"y": {"mean": 2.0, "sd": 0.5}}), MEASURED, rules, "y") == []
    assert "too uncertain" in rule_failures(candidate(0.5, predicted={"y": {"mean": 2.0, "sd": 1.5}}), MEASURED, rules, "y")[0]
    assert rule_failures(candidate(0.5), MEASURED, rules, "y") == ["no model prediction of y"]


@pytest.mark.slow
def test_unattended_rules_campaign_finishes_through_rules_and_timeouts(tmp_path, ray_address):
    config = write_campaign(tmp_path / "rules.yaml", budget=8, batch_size=2)
    config.write_text(config.read_text().replace("approval:\n  policy: auto\n", """approval:
  policy: rules
  rules: {min_measured: 2, inside_explored: true, margin: 0.5}
  timeout_s: 0.5
  default: approve
"""))
    out = tmp_path / "run"
    store, spec = prepare(config, out, ray_address=ray_address)
    summary = execute(store, spec, out)
    assert summary["status"] == "completed" and summary["n_experiments"] == 8
    deciders = [a["decided_by"] for a in open_run(out)[0].approvals()]
    assert deciders[:2] == ["policy:timeout", "policy:timeout"]  # nothing measured yet: ask, nobody answers
    assert set(deciders) == {"policy:timeout", "policy:rules"} and len(deciders) == 8
