"""Operators steering running campaigns: edit, pause and resume, batch size through a scripted LLM in
the chat; the lab kept busy while proposals wait; the rules judging recipes' cost and hazards."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage

from athanor.campaign import execute, open_run, prepare
from athanor.chat import chat_once
from athanor.cli import main
from athanor.pool import load_pool
from conftest import DATA, P3HT_INPUTS, P3HT_OBJECTIVE, ROOT, write_campaign
from helpers_live import drive_to_the_end, start

pytestmark = pytest.mark.slow

ALLOY = """campaign: operator_e2e
seed: 3
space:
  composition:
    elements: {Fe: [0.3, 1.0], Co: [0.0, 0.7]}
objectives:
  - {name: magnetic_moment, direction: maximize}
budget: {experiments: 6}
batch_size: 2
designer: {strategy: random}
world: {kind: alloy, options: {structure: bcc}}
approval: {policy: always}
"""


def wait_for(condition, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def state(out: Path) -> dict[str, dict]:
    store, _ = open_run(out)
    try:
        return {s["id"]: s for s in store.samples()}
    finally:
        store.close()


def call(name, args, cid):
    return {"name": name, "args": args, "id": cid, "type": "tool_call"}


def test_scripted_operator_edits_pauses_and_resizes_a_running_campaign(tmp_path, ray_address, capsys):
    config = tmp_path / "alloy.yaml"
    config.write_text(ALLOY)
    out = tmp_path / "run"
    runner, result = start(config, out, ray_address)
    try:
        wait_for(lambda: sum(s["awaiting_approval"] for s in state(out).values()) == 4, "four proposals waiting")
        original = state(out)["S0001"]["inputs"]
        operator = FakeMessagesListChatModel(responses=[
            AIMessage(content="", tool_calls=[call("pause", {}, "p"),
                                              call("edit", {"sample_id": "S0001", "inputs": {"Fe": 0.7, "Co": 0.3},
                                                            "reason": "closer to the Slater-Pauling peak"}, "e"),
                                              call("approve", {"sample_ids": ["S0002"]}, "a")]),
            AIMessage(content="Paused; S0001 edited to Fe70Co30 and approved; S0002 approved."),
        ])
        assert chat_once(out, "pause, move 1 to Fe70Co30, approve 2", user="carol", model=operator,
                         confirmed=True).startswith("Paused")
        wait_for(lambda: state(out)["S0002"]["state"] == "planned" and state(out)["S0001"]["inputs"]["Fe"] == 0.7,
                 "both decisions logged")
        time.sleep(1.5)  # paused: the revised S0001 is not planned again, the approved S0002 not made
        now = state(out)
        assert (now["S0001"]["state"], now["S0001"]["recipe"], now["S0002"]["state"]) == ("proposed", None, "planned")
        assert now["S0001"]["inputs"] == {"Fe": 0.7, "Co": 0.3} and now["S0001"]["candidate"]["edited_from"] == original

        resize = FakeMessagesListChatModel(responses=[
            AIMessage(content="", tool_calls=[call("set_batch_size", {"batch_size": 1}, "b"),
                                              call("resume", {}, "r")]),
            AIMessage(content="Batch size 1; resumed."),
        ])
        assert chat_once(out, "one at a time from now on, and carry on", user="carol", model=resize,
                         confirmed=True).startswith("Batch size 1; resumed.")
    finally:
        drive_to_the_end(out, runner, user="dan")
    assert result["summary"]["status"] == "completed" and result["summary"]["n_experiments"] == 6

    store, _ = open_run(out)
    s1 = store.sample("S0001")
    assert s1["state"] == "learned" and s1["recipe"]["inputs"] == {"Fe": 0.7, "Co": 0.3}
    assert s1["values"]["magnetic_moment"] > 2.0  # bcc Fe70Co30 sits near the Slater-Pauling peak
    edit, approval = [a for a in store.approvals() if a["sample_id"] == "S0001"]
    assert edit["edited_inputs"] == {"Fe": 0.7, "Co": 0.3} and edit["decided_by"] == "carol"
    # the revised candidate came back, with its new recipe, for an operator's approval (policy `always`)
    assert approval["decided_by"] == "dan" and approval["approved"] and approval["edited_inputs"] is None
    asked = [e.reason for e in store.events("S0001", "approval_request")]
    assert len(asked) == 2 and asked[1].startswith("revised by an operator")
    assert edit["reason"] == "closer to the Slater-Pauling peak" and edit["channel"] == "chat"
    assert edit["transcript"]["operator_message"] == "pause, move 1 to Fe70Co30, approve 2"

    events = store.events()
    controls = [(e.event, e.detail["by"]) for e in events if e.kind == "campaign_event" and "by" in e.detail]
    assert controls == [("paused", "carol"), ("batch_size_set", "carol"), ("unpaused", "carol")]
    kinds = [(e.kind, getattr(e, "event", None), e.sample_id) for e in events]
    paused, unpaused = kinds.index(("campaign_event", "paused", None)), kinds.index(("campaign_event", "unpaused", None))
    assert not any(k == "step_intent" for k, _, _ in kinds[paused:unpaused]), "a step started while paused"
    resized = kinds.index(("campaign_event", "batch_size_set", None))
    later = [e.n for e in events[resized:] if e.kind == "design_request"]
    assert later and set(later) == {1}

    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    login = store.approvals()[0]["login"]  # the account the chat ran as, beside the name it was given
    assert f"S0001 revised to Fe=0.7, Co=0.3 (closer to the Slater-Pauling peak) by carol (login {login}) via chat" in text
    assert "batch size 1" in text and "chat session" in text


def test_waiting_proposals_do_not_hold_up_the_lab(tmp_path, ray_address):
    pool = load_pool(DATA / "P3HT.csv", P3HT_INPUTS, [P3HT_OBJECTIVE])
    config = write_campaign(tmp_path / "c.yaml", budget=6, batch_size=2, approval="always", latency_s=0.02)
    out = tmp_path / "run"
    runner, result = start(config, out, ray_address)
    try:
        wait_for(lambda: sum(s["awaiting_approval"] for s in state(out).values()) == 4, "four proposals waiting")
        # An edit in a pool space lands on another row of the dataset, which the lab then measures.
        claimed = {s["pool_index"] for s in state(out).values()}
        row = next(i for i in range(len(pool)) if i not in claimed)
        assert main(["edit", str(out), "S0003", *(f"{k}={v}" for k, v in pool.iloc[row][P3HT_INPUTS].items()),
                     "--user", "ada"]) == 0
        assert main(["approve", str(out), "S0004", "--user", "ada"]) == 0
        wait_for(lambda: (state(out)["S0003"]["recipe"] or {}).get("pool_index") == row
                 and state(out)["S0003"]["awaiting_approval"], "the revised S0003 back for approval, planned at its row")
        assert main(["approve", str(out), "S0003", "--user", "ada"]) == 0
        # S0001 and S0002 still wait; the lab runs batch 1 and the designer is asked for batch 2.
        wait_for(lambda: "S0005" in state(out), "a third batch while the first still waits")
        wait_for(lambda: state(out)["S0003"]["state"] == state(out)["S0004"]["state"] == "learned", "batch 1 measured")
        now = state(out)
        assert now["S0001"]["awaiting_approval"] and now["S0002"]["awaiting_approval"]
        assert sum(s["state"] == "proposed" for s in now.values()) == 4  # no more than max_waiting undecided
        assert main(["batch-size", str(out), "0", "--user", "ada"]) == 2
    finally:
        drive_to_the_end(out, runner)
    assert result["summary"]["status"] == "completed" and result["summary"]["n_experiments"] == 6
    edited = state(out)["S0003"]
    assert edited["pool_index"] == row and edited["values"][P3HT_OBJECTIVE] == pytest.approx(pool.iloc[row][P3HT_OBJECTIVE])


def test_rules_judge_the_recipe_cost_and_hazards(tmp_path, ray_address):
    text = (ROOT / "configs/solid_state_demo.yaml").read_text()
    config = tmp_path / "rules.yaml"
    config.write_text(text.replace("experiments: 10", "experiments: 8").replace("approval:\n  policy: auto\n", """approval:
  policy: rules
  rules: {min_measured: 0, inside_explored: false, max_cost_usd: 0.15, allowed_hazards: []}
  timeout_s: 0.3
  default: approve
"""))
    out = tmp_path / "run"
    store, spec = prepare(config, out, ray_address=ray_address)
    summary = execute(store, spec, out)
    assert summary["status"] in ("completed", "target_met")
    asked = {e.sample_id: e.reason for e in store.events(kind="approval_request")}
    decided = {a["sample_id"]: a["decided_by"] for a in store.approvals()}
    judged = 0
    for sample in store.samples():
        if sample["id"] not in decided:
            continue
        recipe = next(e for e in store.events(sample["id"], "synthesis_recipe"))  # planned before the decision
        flagged = {h for flags in recipe.hazards.values() for h in flags}
        inside = recipe.cost_usd <= 0.15 and not flagged
        assert (decided[sample["id"]] == "policy:rules") == inside, (sample["id"], recipe.cost_usd, flagged)
        if not inside:
            assert ("hazardous precursors" in asked[sample["id"]]) == bool(flagged)
            assert ("over the $0.15" in asked[sample["id"]]) == (recipe.cost_usd > 0.15)
            assert decided[sample["id"]] == "policy:timeout"
        judged += 1
    assert judged == 8 and set(decided.values()) == {"policy:rules", "policy:timeout"}
