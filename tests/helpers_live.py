"""A campaign running in this test's process, and an operator who sees it through to the end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from athanor.campaign import execute, open_run, prepare
from athanor.chat import chat_once


def start(config: Path, out: Path, ray_address: str) -> tuple[threading.Thread, dict]:
    store, spec = prepare(config, out, ray_address=ray_address)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=execute(store, spec, out)))
    runner.start()
    return runner, result


def drive_to_the_end(out: Path, runner: threading.Thread, user: str = "ada", timeout: float = 120.0) -> None:
    """Approve whatever waits until the campaign ends (also after a failed assertion, so that a
    failing test does not leave a campaign waiting in the shared Ray instance)."""
    deadline = time.monotonic() + timeout
    while runner.is_alive() and time.monotonic() < deadline:
        chat_once(out, "resume", user=user) if state_paused(out) else chat_once(out, "approve all pending", user=user,
                                                                                 confirmed=True)
        time.sleep(0.3)
    runner.join(timeout=10)


def state_paused(out: Path) -> bool:
    """Paused, with no resume on its way."""
    store, _ = open_run(out)
    try:
        return store.controls()["paused"] and not any(c["action"] == "resume" for _, c in store.pending_commands())
    finally:
        store.close()
