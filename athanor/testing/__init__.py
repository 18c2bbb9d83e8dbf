"""A testing kit for labs that extend Athanor: test your own campaigns, instruments, plans and routes.

    from athanor.testing import FaultyWorld, assert_invariants, campaign_file, run_in_process

    def test_my_furnace_survives_a_fault(tmp_path):
        config = campaign_file(tmp_path / "c.yaml", "campaigns/furnace.yaml", budget={"experiments": 4})
        run = run_in_process(config, tmp_path / "run",
                             wrap_world=lambda w: FaultyWorld(w, fail={"S0002:synthesis"}))
        assert run.store.sample("S0002")["state"] == "failed"
        assert_invariants(run.store, run.spec, run.out)

With Athanor installed, pytest also offers the fixtures `athanor_campaign` (writes campaign files under
the test's tmp_path) and `athanor_run` (runs one in process there): see athanor/testing/plugin.py.
"""

from importlib import import_module
from typing import Any

# Loaded on first use: pytest imports this package (through the fixtures' entry point) in every test
# session where Athanor is installed, and should not pay for pandas and the store there.
_WHERE = {
    "FaultyWorld": "faults",
    "Check": "invariants", "InvariantViolation": "invariants", "assert_invariants": "invariants",
    "check_campaign": "invariants", "step_times": "invariants",
    "DEFAULT_CAMPAIGN": "runner", "InProcessRun": "runner", "answer_operator": "runner", "approve_all": "runner",
    "campaign_file": "runner", "run_in_process": "runner",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'athanor.testing' has no attribute {name!r}")
    return getattr(import_module(f"athanor.testing.{_WHERE[name]}"), name)
