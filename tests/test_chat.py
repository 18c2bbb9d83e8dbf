"""The chat: the real agent loop and tools over a stored campaign with proposals awaiting approval."""

from __future__ import annotations

import io
import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage

from athanor.chat import ChatSession, chat_once, chat_repl, make_model, open_session, validate_inputs
from athanor.chat_model import DeterministicChatModel, parse_command
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


@pytest.fixture
def run_dir(tmp_path):
    """A stopped campaign: S0001-S0002 measured, S0003-S0005 awaiting an operator."""
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
    waiting = [{"temperature": 360.0, "Sn": 0.75, "Pb": 0.25, "Ge": 0.0},
               {"temperature": 450.0, "Sn": 0.6, "Pb": 0.2, "Ge": 0.2},
               {"temperature": 580.0, "Sn": 0.5, "Pb": 0.5, "Ge": 0.0}]
    store.append(DesignProposal(**env(), batch=1, strategy="bayesian", model_version="gp-1", candidates=[
        Candidate(inputs=x, sample_id=f"S000{i + 3}", acquisition_value=0.5 - 0.1 * i,
                  predicted={"gap": Prediction(mean=1.5 + 0.1 * i, sd=0.12)}, rationale="high expected improvement")
        for i, x in enumerate(waiting)]))
    for i in (3, 4, 5):
        store.append(ApprovalRequest(**env(f"S000{i}"), policy="always", reason="every proposal waits"))
    store.close()
    return tmp_path


def inbox(run_dir):
    store = Store(f"sqlite:///{run_dir}/campaign.db", CAMP)
    try:
        return [c for _, c in store.pending_commands()]
    finally:
        store.close()


def scripted(*messages):
    return FakeMessagesListChatModel(responses=list(messages))


def call(name, args, cid="c1"):
    return {"name": name, "args": args, "id": cid, "type": "tool_call"}


# --- the built-in model ------------------------------------------------------------------------
def test_parse_commands():
    assert parse_command("approve 3 and 5")[0]["args"] == {"sample_ids": ["3", "5"]}
    assert parse_command("approve S0003, S0005")[0]["args"] == {"sample_ids": ["S0003", "S0005"]}
    assert parse_command("approve all pending")[0]["args"] == {"sample_ids": [], "all_pending": True}
    assert parse_command("reject 4: too much Pb")[0]["args"] == {"sample_id": "4", "reason": "too much Pb"}
    assert [c["name"] for c in parse_command("why 7?")] == ["explain"]
    assert parse_command("explain 7")[0]["args"] == {"sample_id": "7"}
    assert parse_command("status")[0]["name"] == "status"
    assert parse_command("pending")[0]["name"] == "list_pending"
    assert parse_command("edit 3 Sn=0.5 Pb=0.5")[0]["args"] == {"sample_id": "3", "inputs": {"Sn": 0.5, "Pb": 0.5}}
    assert parse_command("make me a sandwich") is None


def test_approve_through_builtin_model(run_dir):
    reply = chat_once(run_dir, "approve 3 and S0004", user="ada", model=DeterministicChatModel())
    assert "approved S0003 S0004" in reply
    assert inbox(run_dir) == [
        {"action": "approve", "sample_id": sid, "user": "ada", "reason": "", "channel": "chat"}
        for sid in ("S0003", "S0004")]
    # the transcript keeps the whole exchange, with who and through which channel
    records = [json.loads(line) for line in (run_dir / "chat-transcript.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["human", "ai", "tool", "ai"]
    assert {r["user"] for r in records} == {"ada"} and {r["channel"] for r in records} == {"chat"}
    assert records[1]["tool_calls"][0]["name"] == "approve"
    # a second approval of the same samples is refused while the first waits for the conductor
    again = chat_once(run_dir, "approve 3", user="ada", model=DeterministicChatModel())
    assert "already has a approve decision" in again and len(inbox(run_dir)) == 2


def test_approve_all_and_reject_with_reason(run_dir):
    reply = chat_once(run_dir, "reject 5: too much Pb", user="bob", model=DeterministicChatModel())
    assert "rejected S0005" in reply
    assert inbox(run_dir) == [{"action": "reject", "sample_id": "S0005", "user": "bob",
                               "reason": "too much Pb", "channel": "chat"}]
    chat_once(run_dir, "approve all pending", user="bob", model=DeterministicChatModel())
    assert [(c["action"], c["sample_id"]) for c in inbox(run_dir)] == [
        ("reject", "S0005"), ("approve", "S0003"), ("approve", "S0004")]
    assert "needs a reason" in chat_once(run_dir, "reject 3", user="bob", model=DeterministicChatModel())


def test_explain_status_pending_and_help(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    why = session.send("why 3?")
    assert "predicted gap 1.5 ± 0.12" in why and "acquisition value 0.5" in why
    assert "nearest measured neighbours" in why and why.index("S0001") < why.index("S0002")  # S0001 is nearer
    assert "not planned yet" in why
    measured = session.send("explain 2")
    assert "measured: gap=1.5" in measured and "recipe: route direct" in measured
    status = session.send("status")
    assert "awaiting approval: S0003 S0004 S0005" in status and "characterized 2" in status
    assert "3 awaiting approval" in session.send("pending")
    assert "approve all pending" in session.send("hello there")
    assert inbox(run_dir) == []


def test_refusals_write_nothing(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    assert "no sample 'S0999'" in session.send("approve S0999")
    assert "nothing approved" in session.send("approve 3 and 999")  # one bad id: none approved
    assert "S0001 is characterized, not awaiting approval" in session.send("approve 1")
    assert "no sample" in session.send("why 42?")
    assert inbox(run_dir) == []


def test_edit_is_validated_and_not_applied(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    out = session.send("edit 3 Pb=0.9 Sn=0.1")
    assert "Pb=0.9 is outside [0.0, 0.5]" in out
    out = session.send("edit 3 temperature=900")
    assert "temperature=900 is outside [300.0, 600.0]" in out
    out = session.send("edit 3 Sn=0.7 Pb=0.2")
    assert "sum to 0.9, not 1" in out
    out = session.send("edit 3 Sn=0.7 Pb=0.3")
    assert "not supported yet" in out and "S0003 is unchanged" in out
    assert inbox(run_dir) == []
    assert validate_inputs(session.spec, {"temperature": 400, "Sn": 1.0, "Pb": 0.0, "Ge": 0.0, "x": 1}) == [
        "unknown input(s) x; the inputs are temperature, Sn, Pb, Ge"]


# --- scripted LLMs through the real loop -----------------------------------------------------
def test_scripted_model_approves_rejects_and_explains(run_dir):
    model = scripted(
        AIMessage(content="", tool_calls=[call("explain", {"sample_id": "S0004"}, "a"),
                                          call("approve", {"sample_ids": [3, "S0004"]}, "b"),
                                          call("reject", {"sample_id": 5, "reason": "Pb at the limit"}, "c")]),
        AIMessage(content="Done: approved S0003 and S0004, rejected S0005."),
    )
    session = open_session(run_dir, "carol", model)
    assert session.send("approve the two cheap ones, drop the lead-heavy one") == \
        "Done: approved S0003 and S0004, rejected S0005."
    tools = [m for m in session.messages if isinstance(m, ToolMessage)]
    assert [t.tool_call_id for t in tools] == ["a", "b", "c"]
    assert "predicted gap 1.6 ± 0.12" in tools[0].content
    assert [(c["action"], c["sample_id"], c["user"], c["channel"], c["reason"]) for c in inbox(run_dir)] == [
        ("approve", "S0003", "carol", "chat", ""), ("approve", "S0004", "carol", "chat", ""),
        ("reject", "S0005", "carol", "chat", "Pb at the limit")]


@pytest.mark.parametrize("bad_call, expected", [
    (call("approve", {"sample_ids": ["S0999"]}), "no sample 'S0999'"),
    (call("approve", {"sample_ids": 5}), "malformed arguments for approve"),
    (call("approve", {"sample_ids": {"id": "S0003"}}), "malformed arguments for approve"),
    (call("approve", {"ids": ["S0003"]}), "malformed arguments for approve"),
    (call("reject", {"sample_id": "S0003"}), "malformed arguments for reject: reason: Field required"),
    (call("reject", {"sample_id": "S0003", "reason": "  "}), "needs a reason"),
    (call("explain", {"sample_id": ["S0003"]}), "malformed arguments for explain"),
    (call("launch_rocket", {"sample_id": "S0003"}), "there is no tool 'launch_rocket'"),
    (call("edit", {"sample_id": "S0003", "inputs": {"Pb": 0.7, "Sn": 0.3}}), "Pb=0.7 is outside"),
])
def test_scripted_bad_calls_are_refused(run_dir, bad_call, expected):
    model = scripted(AIMessage(content="", tool_calls=[bad_call]), AIMessage(content="sorry"))
    session = open_session(run_dir, "eve", model)
    assert session.send("do it") == "sorry"
    tool_message = session.messages[-2]
    assert isinstance(tool_message, ToolMessage) and tool_message.content.startswith("ERROR:")
    assert expected in tool_message.content
    assert inbox(run_dir) == []


def test_runaway_model_is_stopped(run_dir):
    model = scripted(*[AIMessage(content="", tool_calls=[call("status", {}, f"s{i}")]) for i in range(10)])
    session = open_session(run_dir, "eve", model)
    assert "stopped after 5 rounds" in session.send("loop")
    assert inbox(run_dir) == []


# --- models and entry points -----------------------------------------------------------------
def test_make_model_defaults_and_falls_back():
    model, note = make_model({})
    assert isinstance(model, DeterministicChatModel) and "built-in" in note
    model, note = make_model({"ATHANOR_CHAT_MODEL": "nosuchprovider:model-x"})
    assert isinstance(model, DeterministicChatModel) and "unavailable" in note


def test_repl_reads_until_quit(run_dir):
    out = io.StringIO()
    chat_repl(run_dir, "ada", DeterministicChatModel(), stdin=io.StringIO("status\napprove 4\nquit\napprove 3\n"),
              stdout=out)
    assert "awaiting approval: S0003 S0004 S0005" in out.getvalue() and "approved S0004" in out.getvalue()
    assert [c["sample_id"] for c in inbox(run_dir)] == ["S0004"]


def test_session_binds_tools_of_a_tool_calling_model(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    assert isinstance(session, ChatSession)
    assert set(session.tools) == {"status", "list_pending", "explain", "approve", "reject", "edit"}
    schema = session.tools["approve"].args_schema.model_json_schema()
    assert "sample_ids" in schema["properties"]


def test_cli_chat_message_mode_decides_as_the_named_user(run_dir, capsys):
    from athanor.cli import main

    assert main(["chat", str(run_dir), "--message", "reject 3: too much Pb", "--user", "ada"]) == 0
    assert "S0003" in capsys.readouterr().out
    (command,) = inbox(run_dir)
    assert command["action"] == "reject" and command["user"] == "ada" and command["channel"] == "chat"
    assert main(["chat", str(run_dir / "nowhere"), "-m", "status"]) == 2
    assert capsys.readouterr().err.startswith("athanor: error:")
