"""`athanor dry-run`: the campaign on Ray against its simulated world, killed and resumed, checked, and
reported as JUnit XML that an independent reader (junitparser) reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from junitparser import Failure, JUnitXml

from athanor.campaign import open_run
from athanor.cli import main
from conftest import ROOT

DEMO = ROOT / "configs" / "solid_state_demo.yaml"
EXAMPLE = ROOT / "examples" / "lab_plugin" / "campaign.yaml"  # its plug-ins installed by the test command
CHECKS = {"campaign_finished", "setpoints_within_limits", "steps_exactly_once", "no_sample_lost",
          "proposals_judged_before_instruments", "messages_valid", "documents_valid", "budget_respected",
          "outputs_written", "sessions_as_planned"}


def cases(path: Path) -> dict[str, list]:
    """Test case name -> its results (failures), as a CI system's JUnit reader sees them."""
    xml = JUnitXml.fromfile(str(path))
    return {case.name: list(case.result) for suite in xml for case in suite}


def over_limit_campaign(tmp_path: Path) -> Path:
    """The demo with a furnace that may not go above 700 °C, while the design space goes to 800 °C."""
    data = yaml.safe_load(DEMO.read_text())
    data["instruments"] = [{"name": "furnace1", "role": "synthesis",
                            "limits": {"furnace.program_temperatures": [None, 700]}},
                           {"name": "xrd1", "role": "characterization"}]
    path = tmp_path / "too_hot.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_the_demo_and_the_example_lab_survive_a_kill_and_every_check_holds(tmp_path, capsys):
    junit, out = tmp_path / "dry-run.xml", tmp_path / "runs"
    code = main(["dry-run", str(DEMO), str(EXAMPLE), "--experiments", "4", "--crash-at", "3", "--junit", str(junit),
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    suites = {suite.name: {case.name: list(case.result) for case in suite} for suite in JUnitXml.fromfile(str(junit))}
    assert set(suites) == {"dry-run solid_state_demo", "dry-run arc_melt_magnets"}
    for found in suites.values():
        assert set(found) == CHECKS and all(results == [] for results in found.values())
    assert printed.count("session 1: killed after instrument step 3") == 2 and "session 2: ran to the end" in printed
    assert "solid_state_demo: all 10 checks hold" in printed and "arc_melt_magnets: all 10 checks hold" in printed
    assert "time per step" in printed
    store, spec = open_run(out / "solid_state_demo")
    events = [e.event for e in store.events(kind="campaign_event")]
    assert events[:2] == ["started", "lease_taken_over"] and events.count("ended") == 1  # a real kill, then resume
    assert spec.world.time_scale == 0 and spec.budget.experiments == 4
    # the kill came after step 3 had finished at its instrument and before its result was logged: resume
    # recovered that result from the run's documents, so some result was logged after a run that ended
    # before the session that logged it began
    resumed_at = next(e.created_at for e in store.events(kind="campaign_event") if e.event == "resumed")
    stops = {d["doc"]["run_start"]: d["doc"]["time"] for s in store.samples() for d in store.documents(s["id"])
             if d["name"] == "stop"}
    recovered = [m for kind in ("synthesis_result", "measurement") for m in store.events(kind=kind)
                 if m.created_at > resumed_at and m.run_uids
                 and all(stops.get(u, 1e18) < resumed_at.timestamp() for u in m.run_uids)]
    assert recovered, "no result was recovered from documents after the kill"
    assert len([s for s in store.samples() if s["state"] in ("learned", "failed")]) == 4


@pytest.mark.slow
def test_a_plan_beyond_a_furnace_limit_fails_naming_device_value_and_limit(tmp_path, capsys):
    junit = tmp_path / "dry-run.xml"
    code = main(["dry-run", str(over_limit_campaign(tmp_path)), "--experiments", "4", "--crash-at", "99",
                 "--junit", str(junit)])
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAIL setpoints_within_limits" in printed
    assert "furnace1_furnace_program_temperatures = 762.646 degC is above its upper limit 700 degC" in printed
    found = cases(junit)
    [limit] = found["setpoints_within_limits"]
    assert isinstance(limit, Failure) and "upper limit 700 degC" in limit.message
    # a kill asked after step 99 of a 4-experiment campaign never happens: said, not passed over
    [never] = found["sessions_as_planned"]
    assert "never happened" in never.message
    assert all(found[name] == [] for name in CHECKS - {"setpoints_within_limits", "sessions_as_planned"})


def test_a_refused_campaign_file_exits_2_naming_the_place_before_anything_runs(tmp_path, capsys):
    data = yaml.safe_load(DEMO.read_text())
    data["instruments"] = [{"name": "f1", "role": "synthesis", "limits": {"oven.temperature": [0, 700]}},
                           {"name": "x1", "role": "characterization"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["dry-run", str(DEMO), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "instruments.0.limits.oven.temperature: f1 has no device 'oven'; its devices: doser, furnace" in err
    assert not out.exists()  # the good file did not run either
    data["instruments"][0]["limits"] = {"furnace.temperature": [0, 700]}  # a readback, not a setpoint
    bad.write_text(yaml.safe_dump(data))
    assert main(["dry-run", str(bad)]) == 2
    assert "furnace has no setpoint 'temperature'; its numeric setpoints: program_temperatures" in capsys.readouterr().err
    data["instruments"][0]["limits"] = {"furnace.program_temperatures": [900, 700]}
    bad.write_text(yaml.safe_dump(data))
    assert main(["dry-run", str(bad)]) == 2
    assert "the lower limit 900 is above the upper limit 700" in capsys.readouterr().err


@pytest.mark.parametrize("flags, said", [
    (["--crash-at", "0"], "--crash-at counts instrument steps from 1"),
    (["--faults", "1.5"], "--faults is a probability per step"),
    (["--faults", "nan"], "--faults is a probability per step"),
    (["--experiments", "0"], "--experiments must be at least 1"),
])
def test_bad_flags_are_refused_in_one_line(flags, said, capsys):
    assert main(["dry-run", str(DEMO), *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
