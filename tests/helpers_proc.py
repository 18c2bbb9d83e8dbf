"""Running the real `athanor` command in a subprocess, and watching its store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from athanor.campaign import open_run


def start_run(config: Path, out: Path, ray_address: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "athanor", "run", str(config), "--out", str(out), "--quiet",
               "--ray-address", ray_address, *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(condition: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 -- the store may not exist yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def samples(out: Path) -> list[dict]:
    store, _ = open_run(out)
    try:
        return store.samples()
    finally:
        store.close()


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the whole process group: no clean-up, as in a power cut of the driver."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
