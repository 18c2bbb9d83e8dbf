"""The chat: the real agent loop and tools over a stored campaign with proposals awaiting approval."""

from __future__ import annotations

import io
import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage

from athanor.chat import ChatSession, chat_once, chat_repl, open_session
from athanor.chat_model import DeterministicChatModel, make_model, parse_command
from athanor.commands import validate_inputs
from athanor.messages import SynthesisRecipe
from athanor.store import Store
from helpers_gated import CAMP, env

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
    assert parse_command('edit 3 "P3HT content (%)"=20 x=1')[0]["args"]["inputs"] == {"P3HT content (%)": 20, "x": 1}
    assert parse_command("pause")[0]["name"] == "pause" and parse_command("resume")[0]["name"] == "resume"
    assert parse_command("batch size 3")[0]["args"] == {"batch_size": 3}
    assert parse_command("batch_size=1")[0]["args"] == {"batch_size": 1}
    assert parse_command("make me a sandwich") is None


def test_approve_through_builtin_model(run_dir):
    reply = chat_once(run_dir, "approve 3 and S0004", user="ada", model=DeterministicChatModel())
    assert "approved S0003 S0004" in reply
    posted = inbox(run_dir)
    assert [{k: v for k, v in c.items() if k != "transcript"} for c in posted] == [
        {"action": "approve", "sample_id": sid, "user": "ada", "reason": "", "channel": "chat"}
        for sid in ("S0003", "S0004")]
    # the transcript keeps the whole exchange, with who and through which channel; the decision links to it
    records = [json.loads(line) for line in (run_dir / "chat-transcript.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["human", "ai", "tool", "ai"]
    assert {r["user"] for r in records} == {"ada"} and {r["channel"] for r in records} == {"chat"}
    assert {c["transcript"]["session"] for c in posted} == {r["session"] for r in records}
    assert posted[0]["transcript"]["operator_message"] == records[0]["content"] == "approve 3 and S0004"
    assert records[1]["tool_calls"][0]["name"] == "approve"
    # a second approval of the same samples is refused while the first waits for the conductor
    again = chat_once(run_dir, "approve 3", user="ada", model=DeterministicChatModel())
    assert "already has a approve decision" in again and len(inbox(run_dir)) == 2


def test_approve_all_and_reject_with_reason(run_dir):
    reply = chat_once(run_dir, "reject 5: too much Pb", user="bob", model=DeterministicChatModel())
    assert "rejected S0005" in reply
    assert [{k: v for k, v in c.items() if k != "transcript"} for c in inbox(run_dir)] == [
        {"action": "reject", "sample_id": "S0005", "user": "bob", "reason": "too much Pb", "channel": "chat"}]
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


def test_edit_is_validated_then_posted_with_the_transcript_link(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    out = session.send("edit 3 Pb=0.9 Sn=0.1")
    assert "Pb=0.9 is outside [0.0, 0.5]" in out and "nothing changed" in out
    out = session.send("edit 3 temperature=900")
    assert "temperature=900 is outside [300.0, 600.0]" in out
    out = session.send("edit 3 Sn=0.7 Pb=0.2")
    assert "sum to 0.9, not 1" in out
    assert "unknown input(s) Bi" in session.send("edit 3 Bi=0.1")
    assert inbox(run_dir) == []
    out = session.send("edit 3 Sn=0.7 Pb=0.3")
    assert "revised S0003" in out and "Sn=0.7, Pb=0.3" in out and "judged again by the 'always' policy" in out
    (command,) = inbox(run_dir)
    assert command["action"] == "edit" and command["user"] == "ada" and command["channel"] == "chat"
    assert command["inputs"] == {"temperature": 360.0, "Sn": 0.7, "Pb": 0.3, "Ge": 0.0}
    assert command["transcript"] == {"session": session.session_id, "file": "chat-transcript.jsonl",
                                     "operator_message": "edit 3 Sn=0.7 Pb=0.3"}
    assert "already has a edit decision waiting" in session.send("approve 3")
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
    (call("edit", {"sample_id": "S0077", "inputs": {"Pb": 0.3, "Sn": 0.7}}), "no sample 'S0077'"),
    (call("edit", {"sample_id": "S0003", "inputs": {"Pb": [0.3]}}), "malformed arguments for edit"),
    (call("set_batch_size", {"batch_size": 0}), "malformed arguments for set_batch_size"),
    (call("set_batch_size", {"batch_size": "four"}), "malformed arguments for set_batch_size"),
    (call("pause", {"now": True}), "malformed arguments for pause"),
    (call("approve", {"sample_ids": [True]}), "malformed arguments for approve"),
    (call("edit", {"sample_id": "S0003", "inputs": {"Sn": True, "Pb": False}}), "malformed arguments for edit"),
    (call("set_batch_size", {"batch_size": True}), "malformed arguments for set_batch_size"),
])
def test_scripted_bad_calls_are_refused(run_dir, bad_call, expected):
    model = scripted(AIMessage(content="", tool_calls=[bad_call]), AIMessage(content="sorry"))
    session = open_session(run_dir, "eve", model)
    assert session.send("do it") == "sorry"
    tool_message = session.messages[-2]
    assert isinstance(tool_message, ToolMessage) and tool_message.content.startswith("ERROR:")
    assert expected in tool_message.content
    assert inbox(run_dir) == []


def test_pause_resume_and_batch_size_through_builtin_model(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    assert "pause posted" in session.send("pause the campaign")
    assert "batch size 2 posted" in session.send("set batch size to 2")
    assert "resume posted" in session.send("resume")
    assert "malformed arguments for set_batch_size" in session.send("batch size 0")
    assert [(c["action"], c.get("batch_size"), c["channel"]) for c in inbox(run_dir)] == [
        ("pause", None, "chat"), ("batch_size", 2, "chat"), ("resume", None, "chat")]


def test_explain_and_pending_show_the_recipe_planned_before_approval(run_dir):
    store = Store(f"sqlite:///{run_dir}/campaign.db", CAMP)
    store.append(SynthesisRecipe(**env("S0004"), route="solid_state", inputs={}, target="ZnFe2O4",
                                 reaction="ZnO + Fe(NO3)3·9H2O -> ZnFe2O4", cost_usd=0.44,
                                 precursors=[{"formula": "ZnO", "mass_g": 0.67}, {"formula": "Fe(NO3)3·9H2O", "mass_g": 6.7}],
                                 steps=[{"action": "heat", "temperature_c": 700, "time_h": 4, "atmosphere": "air"}],
                                 hazards={"ZnO": [], "Fe(NO3)3·9H2O": ["oxidizer", "irritant"]}))
    store.close()
    session = open_session(run_dir, "ada", DeterministicChatModel())
    out = session.send("why 4?")
    assert "recipe: route solid_state, ZnO + Fe(NO3)3·9H2O -> ZnFe2O4; precursors ZnO 0.67 g" in out
    assert "heating: 700 °C for 4 h in air" in out and "precursor cost $0.44" in out
    assert "hazards: Fe(NO3)3·9H2O (oxidizer, irritant)" in out
    assert "recipe: not planned yet" in session.send("why 3?")
    assert "S0004 (batch 1)" in (pending := session.send("pending")) and "precursors $0.44; hazards: irritant, oxidizer" in pending
    assert "asks because: every proposal waits" in pending


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
    model, note = make_model({}, configured="otherprovider:model-y")  # the campaign's approval.chat_model
    assert isinstance(model, DeterministicChatModel) and "otherprovider:model-y unavailable" in note
    _, note = make_model({"ATHANOR_CHAT_MODEL": "builtin"}, configured="otherprovider:model-y")
    assert note.startswith("model: built-in (plain")  # the environment overrides the campaign file


def test_repl_reads_until_quit(run_dir):
    out = io.StringIO()
    chat_repl(run_dir, "ada", DeterministicChatModel(), stdin=io.StringIO("status\napprove 4\nquit\napprove 3\n"),
              stdout=out)
    assert "awaiting approval: S0003 S0004 S0005" in out.getvalue() and "approved S0004" in out.getvalue()
    assert [c["sample_id"] for c in inbox(run_dir)] == ["S0004"]


def test_session_binds_tools_of_a_tool_calling_model(run_dir):
    session = open_session(run_dir, "ada", DeterministicChatModel())
    assert isinstance(session, ChatSession)
    assert set(session.tools) == {"status", "list_pending", "explain", "approve", "reject", "edit", "pause", "resume",
                                  "set_batch_size"}
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
