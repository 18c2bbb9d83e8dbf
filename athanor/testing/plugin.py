"""pytest fixtures for a lab's tests, registered by Athanor's `pytest11` entry point (nothing to import).

    def test_my_campaign(athanor_campaign, athanor_run):
        run = athanor_run(athanor_campaign("campaigns/furnace.yaml", budget={"experiments": 4}))
        assert run.status == "completed"
"""

from __future__ import annotations

from itertools import count
from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture
def athanor_campaign(tmp_path: Path) -> Callable[..., Path]:
    """`make(base=None, **overrides)`: a campaign file under tmp_path (see athanor.testing.campaign_file)."""
    from athanor.testing.runner import campaign_file

    numbers = count(1)
    return lambda base=None, **overrides: campaign_file(tmp_path / f"campaign{next(numbers)}.yaml", base, **overrides)


@pytest.fixture
def athanor_run(tmp_path: Path) -> Callable[..., Any]:
    """`run(config, **options)`: the campaign run in process to its end in a fresh run folder under
    tmp_path (see athanor.testing.run_in_process); the run's store is closed after the test."""
    from athanor.testing.runner import run_in_process

    numbers, runs = count(1), []

    def run(config: str | Path, **options: Any) -> Any:
        runs.append(run_in_process(config, tmp_path / f"run{next(numbers)}", **options))
        return runs[-1]

    yield run
    for finished in runs:
        finished.store.close()
