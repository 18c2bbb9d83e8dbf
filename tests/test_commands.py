"""Operators' commands: checked when posted, checked again and carried out by the conductor, and what
the store derives from them (edited inputs, recipes shown before approval, pause and batch size)."""

from __future__ import annotations

import pytest

from athanor import commands
from athanor.campaign import open_run
from athanor.conductor import Conductor
from athanor.errors import AthanorError
from athanor.messages import SynthesisRecipe
from helpers_gated import env

NEW = {"temperature": 400.0, "Sn": 0.7, "Pb": 0.3, "Ge": 0.0}


def conductor(run_dir):
    store, spec = open_run(run_dir)
    return Conductor(spec, store, agents=None)


def test_posting_checks_everything_first_and_posts_all_or_nothing(run_dir):
    store, spec = open_run(run_dir)
    with pytest.raises(AthanorError, match="no sample 'S0042'.*sample S0001 is characterized, not awaiting"):
        commands.decide(store, spec, ["S0003", "S0042", "S0001"], True, "ada")
    with pytest.raises(AthanorError, match="a rejection needs a reason"):
        commands.decide(store, spec, ["S0003"], False, "ada", "  ")
    with pytest.raises(AthanorError, match="Pb=0.6 is outside"):
        commands.edit(store, spec, "S0003", {"Pb": 0.6, "Sn": 0.4}, "ada")
    with pytest.raises(AthanorError, match="batch size must be a whole number from 1 to 64, got 0"):
        commands.control(store, spec, "batch_size", "ada", batch_size=0)
    with pytest.raises(AthanorError, match="malformed command: action"):
        commands.control(store, spec, "explode", "ada")
    assert store.pending_commands() == []
    assert commands.edit(store, spec, "S0003", {"temperature": 400.0, "Sn": 0.7, "Pb": 0.3}, "ada") == NEW
    with pytest.raises(AthanorError, match="S0003 already has a edit decision waiting"):
        commands.decide(store, spec, ["S0003"], False, "bob", "changed my mind")


def test_the_conductor_carries_out_edits_and_controls_and_refuses_the_rest(run_dir):
    c = conductor(run_dir)
    store, spec = c.store, c.spec
    store.append(SynthesisRecipe(**env("S0004"), route="direct", inputs=store.sample("S0004")["inputs"]))
    assert store.sample("S0004")["state"] == "proposed" and store.sample("S0004")["recipe"]  # shown, not yet run
    commands.edit(store, spec, "S0003", {"Sn": 0.7, "Pb": 0.3, "temperature": 400.0}, "ada", "less Pb",
                  channel="chat", transcript={"session": "s1", "operator_message": "edit 3 Sn=0.7 Pb=0.3"})
    commands.decide(store, spec, ["S0004"], True, "ada")
    commands.control(store, spec, "pause", "ada")
    commands.control(store, spec, "batch_size", "bob", batch_size=5)
    # Posted behind the checks' back (an old client, a hand-edited inbox): the conductor checks again.
    store.post_command({"action": "approve", "sample_id": "S0003", "user": "eve"})  # decided by then
    store.post_command({"action": "launch", "user": "eve"})
    store.post_command({"action": "edit", "sample_id": "S0005", "user": "eve", "inputs": {"Sn": 2.0}})
    store.post_command(["approve", "S0005"])  # not a command at all
    store.post_command({"action": "approve", "sample_id": 5, "user": "eve"})  # no sample id
    store.post_command({"action": "approve", "sample_id": "S0005", "user": "policy:auto"})  # posing as the policy
    store.post_command({"action": "approve", "sample_id": "S0005", "user": "eve", "batch_size": 2})
    store.post_command({"action": "approve", "sample_id": "S0005", "user": "eve", "transcript": {"words": "ok"}})
    c._consume_inbox()

    assert store.pending_commands() == []
    edited, approved = store.sample("S0003"), store.sample("S0004")
    # revised: proposed again, to be planned and judged again
    assert (edited["state"], edited["awaiting_approval"], edited["inputs"], edited["recipe"]) == (
        "proposed", False, NEW, None)
    assert edited["candidate"]["edited_from"] == {"temperature": 360.0, "Sn": 0.75, "Pb": 0.25, "Ge": 0.0}
    assert edited["candidate"]["predicted"] == {}  # the prediction was for the designer's inputs
    assert approved["state"] == "planned"  # its recipe was planned before approval
    (decision,) = [a for a in store.approvals() if a["sample_id"] == "S0003"]
    assert decision["edited_inputs"] == NEW and decision["reason"] == "less Pb"
    assert decision["transcript"]["operator_message"] == "edit 3 Sn=0.7 Pb=0.3"
    assert (c.paused, c.batch_size) == (True, 5) and store.controls() == {"paused": True, "batch_size": 5}
    faults = [e.error for e in store.events(kind="fault")]
    assert len(faults) == 8
    assert "ignored 'approve' from 'eve': sample S0003 is proposed, not awaiting approval" in faults[0]
    assert "ignored 'launch'" in faults[1] and "malformed command" in faults[1]
    assert "edit of S0005: Sn=2.0 is outside" in faults[2] and "missing input(s)" in faults[2]
    assert "malformed command ['approve', 'S0005']" in faults[3]
    assert "sample_id: Input should be a valid string" in faults[4]
    assert "names starting with 'policy:' are the approval policy's own" in faults[5]
    assert "batch_size does not go with approve" in faults[6]
    assert "transcript.session: Field required" in faults[7]
    assert store.sample("S0005")["awaiting_approval"]

    before = store.samples()
    store.rebuild()  # the log alone gives the same state: edits, recipes before approval
    assert store.samples() == before


def test_a_resumed_conductor_keeps_what_operators_set(run_dir):
    c = conductor(run_dir)
    commands.control(c.store, c.spec, "pause", "ada")
    commands.control(c.store, c.spec, "batch_size", "ada", batch_size=2)
    commands.control(c.store, c.spec, "resume", "ada")
    c._consume_inbox()
    assert c.store.controls() == {"paused": False, "batch_size": 2}
    events = [(e.event, e.detail["by"], e.detail["channel"]) for e in c.store.events(kind="campaign_event")]
    assert events == [("paused", "ada", "cli"), ("batch_size_set", "ada", "cli"), ("unpaused", "ada", "cli")]


def test_time_paused_does_not_count_toward_approval_timeouts(run_dir):
    import time

    store, spec = open_run(run_dir)
    spec = spec.model_copy(update={"approval": spec.approval.model_copy(update={"timeout_s": 1.5})})
    c = Conductor(spec, store, agents=None)
    assert not c._expire()  # the clocks start
    commands.control(store, spec, "pause", "ada")
    c._consume_inbox()
    time.sleep(2.0)
    assert not c._expire()  # paused: nothing expires
    commands.control(store, spec, "resume", "ada")
    c._consume_inbox()
    assert not c._expire()  # and the pause does not count afterwards
    time.sleep(1.8)
    assert c._expire() and store.sample("S0003")["state"] == "rejected"


def test_a_store_written_before_a_column_was_added_opens_and_rebuilds(run_dir):
    import sqlite3

    from athanor.store import Store
    with sqlite3.connect(run_dir / "campaign.db") as db:  # as an earlier version left it
        db.execute("ALTER TABLE approvals DROP COLUMN edited_inputs")
        db.execute("ALTER TABLE approvals DROP COLUMN transcript")
    store = Store(f"sqlite:///{run_dir}/campaign.db", "chat-test-0001")
    store.rebuild()
    assert [a["sample_id"] for a in store.approvals()] == ["S0001", "S0002"]
    _, spec = open_run(run_dir)
    commands.edit(store, spec, "S0003", {"Sn": 0.7, "Pb": 0.3}, "ada")
    Conductor(spec, store, agents=None)._consume_inbox()
    assert store.approvals()[-1]["edited_inputs"]["Sn"] == 0.7


def test_current_user_precedence(run_dir, monkeypatch):
    _, spec = open_run(run_dir)
    configured = spec.model_copy(update={"approval": spec.approval.model_copy(update={"operator": "lab-lead"})})
    monkeypatch.delenv("ATHANOR_USER", raising=False)
    assert commands.current_user(None, configured) == "lab-lead"
    monkeypatch.setenv("ATHANOR_USER", "ada")
    assert commands.current_user(None, configured) == "ada"
    assert commands.current_user("grace", configured) == "grace"


def test_cli_edit_pause_and_batch_size(run_dir, capsys):
    from athanor.cli import main

    assert main(["edit", str(run_dir), "S0005", "Pb=0.3", "Sn=0.7", "--user", "ada", "--reason", "less Pb"]) == 0
    assert "revised S0005: temperature=580, Sn=0.7, Pb=0.3, Ge=0; it is planned and judged again" in capsys.readouterr().out
    assert main(["edit", str(run_dir), "S0004", "Pb=true", "Sn=0.7"]) == 2  # true is no number
    assert "inputs.Pb" in capsys.readouterr().err
    assert main(["approve", str(run_dir), "S0003", "--user", "policy:auto"]) == 2
    assert "the approval policy's own" in capsys.readouterr().err
    assert main(["edit", str(run_dir), "S0004", "Pb"]) == 2
    assert "'Pb': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["batch-size", str(run_dir), "70"]) == 2
    assert "from 1 to 64, got 70" in capsys.readouterr().err
    assert main(["pause", str(run_dir), "--user", "ada"]) == 0
    capsys.readouterr()
    assert main(["status", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "awaiting approval: S0004 (every proposal waits)" in text and "batch size 3" in text
    store, _ = open_run(run_dir)
    assert [(c["action"], c.get("sample_id")) for _, c in store.pending_commands()] == [("edit", "S0005"), ("pause", None)]


def test_an_edit_in_a_pool_space_must_land_on_an_unclaimed_row(tmp_path):
    from athanor.messages import ApprovalRequest, Candidate, DesignProposal
    from athanor.pool import load_pool
    from athanor.spec import load_campaign
    from athanor.store import Store
    from conftest import DATA, P3HT_INPUTS, write_campaign

    spec = load_campaign(write_campaign(tmp_path / "c.yaml", approval="always"))
    rows = load_pool(DATA / "P3HT.csv", P3HT_INPUTS, [])
    store = Store(f"sqlite:///{tmp_path}/campaign.db", "pool-0001")
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    penv = dict(campaign_id="pool-0001", sender="conductor")
    store.append(DesignProposal(**penv, batch=0, strategy="sobol", candidates=[
        Candidate(inputs=rows.iloc[i].to_dict(), pool_index=i, sample_id=f"S000{i + 1}") for i in (0, 1)]))
    for sid in ("S0001", "S0002"):
        store.append(ApprovalRequest(**penv, sample_id=sid, policy="always", reason="asks"))
    c = Conductor(spec, store, agents=None)

    commands.edit(store, spec, "S0001", rows.iloc[5].to_dict(), "ada")
    c._consume_inbox()
    edited = store.sample("S0001")
    assert edited["pool_index"] == 5 and edited["inputs"] == rows.iloc[5].to_dict()
    with pytest.raises(AthanorError, match="row 5 of P3HT.csv is already sample S0001"):
        commands.edit(store, spec, "S0002", rows.iloc[5].to_dict(), "ada")
    with pytest.raises(AthanorError, match=r"no row of P3HT.csv has these inputs .*the nearest is row \d+: P3HT"):
        commands.edit(store, spec, "S0002", {P3HT_INPUTS[0]: 21.123}, "ada")
    with pytest.raises(AthanorError, match="is not a finite number"):
        commands.edit(store, spec, "S0002", {P3HT_INPUTS[0]: "lots"}, "ada")



def test_a_decision_is_withdrawn_until_the_conductor_takes_it_up(run_dir, capsys):
    from athanor.cli import main

    c = conductor(run_dir)
    store, spec = c.store, c.spec
    first, second = commands.decide(store, spec, ["S0003"], True, "ada"), commands.decide(store, spec, ["S0004"], True, "ada")
    queued = {q["sample_id"]: q["command_id"] for q in store.queued_commands()}
    assert first == ["S0003"] and second == ["S0004"] and not any(q["claimed"] for q in store.queued_commands())
    with pytest.raises(AthanorError, match="viewers read"):
        commands.withdraw(store, [queued["S0003"]], commands.Operator("vic", role="viewer"))
    withdrawn, problems = commands.withdraw(store, [queued["S0003"], 999], "bob")
    assert [w["sample_id"] for w in withdrawn] == ["S0003"] and "command 999 is not waiting" in problems[0]
    assert main(["withdraw", str(run_dir), str(queued["S0003"])]) == 2  # gone already: said, exit 2
    assert "is not waiting" in capsys.readouterr().err
    c._consume_inbox()
    assert store.sample("S0003")["awaiting_approval"] and store.sample("S0004")["state"] != "proposed"
    assert [a["sample_id"] for a in store.approvals() if a["channel"] == "cli"] == ["S0004"]
    assert main(["withdraw", str(run_dir), str(queued["S0004"])]) == 2  # carried out: it stands


def test_claim_and_withdraw_race_has_one_winner(run_dir):
    import threading

    store, spec = open_run(run_dir)
    for _ in range(30):
        (command_id,) = commands.post(store, spec, [commands.control_command("pause", "ada")])
        results: dict[str, bool] = {}
        start = threading.Barrier(2)

        def claim():
            start.wait()
            results["claim"] = store.claim(command_id)

        def withdraw():
            start.wait()
            results["withdraw"] = store.withdraw(command_id, "bob")

        threads = [threading.Thread(target=claim), threading.Thread(target=withdraw)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["claim"] != results["withdraw"], results
        store.consume(command_id)
