"""`athanor bench designers`: success judged against the campaign's criteria, the JSON it writes."""

from __future__ import annotations

import json
import sys

import pytest

from athanor.cli import main
from athanor.errors import AthanorError
from athanor.spec import parse_campaign
from conftest import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import designers as bench  # noqa: E402

SPEC = parse_campaign("""campaign: t
space: {composition: {elements: {Fe: [0, 1], Co: [0, 1]}}}
objectives:
  - {name: magnetic_moment, direction: maximize, tolerance: 0.05}
  - {name: exchange_splitting, direction: target, target: 2.0, tolerance: 0.1}
outcome_constraints: [{name: valence_electrons, upper: 8.5}]
budget: {experiments: 4}
world: {kind: alloy}
""")


def test_success_needs_every_criterion():
    ok = {"magnetic_moment": 2.36, "exchange_splitting": 2.05, "valence_electrons": 8.2}
    assert bench.success(ok, SPEC, {"magnetic_moment": 2.38})
    assert not bench.success({**ok, "magnetic_moment": 2.30}, SPEC, {"magnetic_moment": 2.38})  # off the optimum
    assert not bench.success({**ok, "exchange_splitting": 2.2}, SPEC, {"magnetic_moment": 2.38})  # off target
    assert not bench.success({**ok, "valence_electrons": 8.6}, SPEC, {"magnetic_moment": 2.38})  # infeasible
    with pytest.raises(AthanorError, match="--optimum magnetic_moment"):
        bench.success(ok, SPEC, {})
    loose = SPEC.model_copy(update={"objectives": [SPEC.objectives[0].model_copy(update={"tolerance": None}),
                                                   SPEC.objectives[1]]})
    assert bench.success({**ok, "magnetic_moment": 0.1}, loose, {})  # no tolerance: not a criterion


def test_bench_designers_writes_the_documented_json(tmp_path, capsys):
    config = tmp_path / "alloy.yaml"
    config.write_text((ROOT / "configs" / "alloy_slater_pauling.yaml").read_text()
                      .replace("    direction: maximize\n", "    direction: maximize\n    tolerance: 0.3\n"))
    out = tmp_path / "out"
    assert main(["bench", "designers", "--config", str(config), "--budget", "4", "--repeats", "2",
                 "--designers", "random,sobol", "--optimum", "magnetic_moment=2.5", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["budget"] == 4 and result["repeats"] == 2 and set(result["designers"]) == {"random", "sobol"}
    for entry in result["designers"].values():
        assert 0.0 <= entry["success_rate"] <= 1.0 and entry["candidates_per_s"] > 0
        hits = [x for x in entry["experiments_to_success"] if x is not None]
        assert len(hits) == round(entry["success_rate"] * 2) and all(1 <= x <= 4 for x in hits)
    assert "success" in capsys.readouterr().out
