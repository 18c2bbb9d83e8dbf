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

from athanor.testing.faults import FaultyWorld
from athanor.testing.invariants import (
    Check,
    InvariantViolation,
    assert_invariants,
    check_campaign,
    step_times,
)
from athanor.testing.runner import (
    DEFAULT_CAMPAIGN,
    InProcessRun,
    answer_operator,
    approve_all,
    campaign_file,
    run_in_process,
)

__all__ = ["Check", "DEFAULT_CAMPAIGN", "FaultyWorld", "InProcessRun", "InvariantViolation", "answer_operator",
           "approve_all", "assert_invariants", "campaign_file", "check_campaign", "run_in_process", "step_times"]
