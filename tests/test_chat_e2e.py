"""The chat against real campaigns: an operator approving in chat lets an `always` campaign finish,
and the interactive terminal chat works under a pseudo-terminal."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from athanor.campaign import execute, open_run, prepare
from athanor.chat import chat_once
from conftest import write_campaign
from helpers_live import start

pytestmark = pytest.mark.slow


def test_campaign_under_always_finishes_when_an_operator_approves_in_chat(tmp_path, ray_address):
    config = write_campaign(tmp_path / "gated.yaml", budget=4, batch_size=2, approval="always")
    out = tmp_path / "run"
    runner, result = start(config, out, ray_address)
    replies = []
    deadline = time.monotonic() + 120
    while runner.is_alive() and time.monotonic() < deadline:
        replies.append(chat_once(out, "approve all pending", user="ada", confirmed=True))
        time.sleep(0.5)
    runner.join(timeout=10)
    assert result["summary"]["status"] == "completed" and result["summary"]["n_experiments"] == 4
    assert any(r.startswith("approved") for r in replies)
    check, _ = open_run(out)
    decisions = [a for a in check.approvals() if a["channel"] == "chat"]
    assert len(decisions) == 4 and {a["decided_by"] for a in decisions} == {"ada"}
    assert (out / "chat-transcript.jsonl").read_text().count('"user": "ada"') >= 1


def test_terminal_chat_under_a_pseudo_terminal(tmp_path, ray_address):
    pexpect = pytest.importorskip("pexpect")
    config = write_campaign(tmp_path / "gated.yaml", budget=2, batch_size=2, approval="always")
    out = tmp_path / "run"
    store, spec = prepare(config, out, ray_address=ray_address)
    runner = threading.Thread(target=lambda: execute(store, spec, out))
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not any(s["awaiting_approval"] for s in open_run(out)[0].samples()):
            assert time.monotonic() < deadline, "no proposal came"
            time.sleep(0.3)
        chat = pexpect.spawn(sys.executable, ["-m", "athanor", "chat", str(out), "--user", "grace"],
                             encoding="utf-8", timeout=60)
        chat.expect("as grace")
        chat.expect("> ")
        chat.sendline("why 1?")
        chat.expect("S0001")
        chat.expect("> ")
        chat.sendline("approve 1 and 2")
        chat.expect("This would approve S0001 S0002 as grace")
        chat.expect("> ")
        chat.sendline("yes")
        chat.expect("approved S0001 S0002 as grace via chat")
        chat.expect("> ")
        chat.sendline("quit")
        chat.expect(pexpect.EOF)
    finally:
        runner.join(timeout=60)
    assert {a["decided_by"] for a in open_run(out)[0].approvals() if a["channel"] == "chat"} == {"grace"}
