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


def test_rules_on_the_recipe_cost_and_hazards():
    from athanor.planners.synthesis import plan_report

    recipes = {tuple(p["formula"] for p in r["precursors"]): r for r in plan_report("ZnFe2O4", batch_g=2.0, top=8)}
    oxides, nitrate = recipes[("ZnO", "Fe2O3")], recipes[("ZnO", "Fe(NO3)3·9H2O")]
    assert oxides["cost_usd"] < nitrate["cost_usd"] and nitrate["hazards"]["Fe(NO3)3·9H2O"] == ["oxidizer", "irritant"]
    no_flags = ApprovalRules(min_measured=0, inside_explored=False, allowed_hazards=[])
    assert rule_failures(candidate(0.5), [], no_flags, "y", oxides) == []
    assert rule_failures(candidate(0.5), [], no_flags, "y", nitrate) == [
        "hazardous precursors: Fe(NO3)3·9H2O (irritant, oxidizer)"]
    irritants_ok = ApprovalRules(min_measured=0, inside_explored=False, allowed_hazards=["irritant"])
    assert rule_failures(candidate(0.5), [], irritants_ok, "y", nitrate) == ["hazardous precursors: Fe(NO3)3·9H2O (oxidizer)"]
    cheap = ApprovalRules(min_measured=0, inside_explored=False, max_cost_usd=0.2)
    assert rule_failures(candidate(0.5), [], cheap, "y", oxides) == []
    assert rule_failures(candidate(0.5), [], cheap, "y", nitrate) == [
        f"precursors cost ${nitrate['cost_usd']:.2f}, over the $0.2 the rules allow"]
    assert rule_failures(candidate(0.5), [], cheap, "y", None) == ["no recipe to judge cost and hazards by"]
    assert rule_failures(candidate(0.5), [], cheap, "y", {"route": "direct"}) == ["the direct recipe has no cost estimate"]


def test_cost_and_hazard_rules_need_a_route_that_gives_them(tmp_path):
    from athanor.errors import SpecError
    from athanor.spec import load_campaign

    config = write_campaign(tmp_path / "c.yaml")
    config.write_text(config.read_text().replace("approval:\n  policy: auto\n",
                                                 "approval:\n  policy: rules\n  rules: {max_cost_usd: 5}\n"))
    with pytest.raises(SpecError, match="max_cost_usd and allowed_hazards need a route that prices"):
        load_campaign(config)
    config.write_text(config.read_text().replace("max_cost_usd: 5", "allowed_hazards: [explosive]"))
    with pytest.raises(SpecError, match="allowed_hazards.0"):
        load_campaign(config)


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
