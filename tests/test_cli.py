"""The `athanor` command line: validation, schema, status, and approval from another terminal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from athanor.cli import main
from conftest import ROOT, write_campaign
from helpers_proc import samples, start_run, wait_for


def athanor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "athanor", *args], capture_output=True, text=True, timeout=120)


def test_validate_ok_for_every_shipped_config():
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        assert main(["validate", str(config)]) == 0, config


def test_validate_reports_every_problem_with_its_place(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"""campaign: broken
space:
  pool:
    dataset: {ROOT / 'data/liang2021/P3HT.csv'}
    inputs: ["P3HT content (%)", "Nope (%)"]
objectives:
  - name: conductivity
    direction: maximize
budget:
  experiments: 10
batchsize: 4
""")
    result = athanor("validate", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}:11: batchsize: unknown key 'batchsize'" in result.stderr
    result = athanor("validate", str(bad.with_name("missing.yaml")))
    assert result.returncode == 2 and "no such campaign file" in result.stderr


def test_dataset_columns_are_checked_with_their_line(tmp_path):
    bad = write_campaign(tmp_path / "c.yaml", objective="Conductance")
    result = athanor("validate", str(bad))
    assert result.returncode == 2
    assert "objectives.0.name: column 'Conductance' is not in P3HT.csv" in result.stderr
    assert f"{bad}:8:" in result.stderr
    run = athanor("run", str(bad), "--out", str(tmp_path / "run"))
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_schema_lists_every_message_kind(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    kinds = {m["properties"]["kind"]["const"] for m in schema["$defs"].values() if "kind" in m.get("properties", {})}
    assert {"design_request", "design_proposal", "approval_request", "approval_decision", "synthesis_request",
            "synthesis_recipe", "synthesis_result", "characterization_request", "measurement", "model_update",
            "fault"} <= kinds


@pytest.mark.slow
def test_always_policy_waits_for_operators_while_the_lab_works(tmp_path, ray_address, capsys):
    config = write_campaign(tmp_path / "c.yaml", budget=4, batch_size=2, latency_s=0.05)
    out = tmp_path / "run"
    process = start_run(config, out, ray_address, "--approval", "always")
    wait_for(lambda: sum(s["awaiting_approval"] for s in samples(out)) == 4, what="four proposals waiting")
    assert {s["state"] for s in samples(out)} == {"proposed"}

    assert main(["approve", str(out), "S0001", "--user", "ada"]) == 0
    wait_for(lambda: samples(out)[0]["state"] == "learned", what="S0001 measured")
    # The lab finished S0001 while the others still waited.
    assert [s["awaiting_approval"] for s in samples(out)[1:]] == [True, True, True]

    assert main(["reject", str(out), "S0003", "--reason", "too close to S0001", "--user", "ada"]) == 0
    assert main(["approve", str(out), "S0002", "S0004", "--user", "grace"]) == 0
    # Unknown and already-decided samples are refused with one line, not a traceback.
    assert main(["approve", str(out), "S0099"]) == 2
    assert "no sample 'S0099'" in capsys.readouterr().err
    # The rejection leaves room in the budget: the designer proposes a fifth sample, which waits.
    wait_for(lambda: any(s["id"] == "S0005" and s["awaiting_approval"] for s in samples(out)), what="S0005")
    assert main(["approve", str(out), "S0005", "--user", "ada"]) == 0
    assert process.wait(timeout=120) == 0

    status = athanor("status", str(out), "--json")
    report = json.loads(status.stdout)
    assert report["status"] == "completed"
    assert report["states"] == {"learned": 4, "rejected": 1}
    decisions = {(a["sample_id"], a["approved"], a["decided_by"], a["channel"]) for a in report["approvals"]}
    assert ("S0003", False, "ada", "cli") in decisions and ("S0004", True, "grace", "cli") in decisions
    rejected = next(a for a in report["approvals"] if a["sample_id"] == "S0003")
    assert rejected["reason"] == "too close to S0001"
    text = athanor("status", str(out)).stdout
    assert f"S0003 rejected (too close to S0001) by ada (login {rejected['login']}) via cli" in text
    assert rejected["login"] and rejected["authenticated"] is False  # a name given, not vouched for


def test_command_line_overrides_are_validated(tmp_path):
    config = write_campaign(tmp_path / "c.yaml")
    result = athanor("run", str(config), "--out", str(tmp_path / "run"), "--seed", "-1")
    assert result.returncode == 2 and "--seed" in result.stderr and "Traceback" not in result.stderr
    result = athanor("run", str(config), "--out", str(tmp_path / "run"), "--max-experiments", "0")
    assert result.returncode == 2 and "--max-experiments" in result.stderr
    assert not (tmp_path / "run" / "run.json").exists()


def test_unreadable_inputs_are_reported_with_their_place(tmp_path):
    dataset = tmp_path / "bad.csv"
    rows = (ROOT / "data/liang2021/P3HT.csv").read_text().splitlines()[:6]
    rows[3] = "," + rows[3].split(",", 1)[1]  # an empty input cell on line 4
    dataset.write_text("\n".join(rows) + "\n")
    result = athanor("validate", str(write_campaign(tmp_path / "c.yaml", dataset=dataset)))
    assert result.returncode == 2
    assert "line 4, column 'P3HT content (%)'" in result.stderr and "Traceback" not in result.stderr
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("campaign: caf\xe9\n".encode("latin-1"))
    result = athanor("validate", str(latin))
    assert result.returncode == 2 and "not UTF-8" in result.stderr
    missing = athanor("status", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no campaign here" in missing.stderr
