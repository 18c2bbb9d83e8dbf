"""The campaign file: shipped configs validate; every problem is reported with its path and line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from athanor.errors import AthanorError, SpecError
from athanor.lab import is_lab_file
from athanor.spec import Campaign, load_campaign, parse_campaign

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not is_lab_file(p))  # lab files: test_lab_scheduling
P3HT = ROOT / "data" / "liang2021" / "P3HT.csv"
P3HT_INPUTS = ["P3HT content (%)", "D1 content (%)", "D2 content (%)", "D6 content (%)", "D8 content (%)"]
P3HT_OUTPUT = "Conductivity (measured) (S/cm)"


def _pool_yaml(dataset: str | Path = P3HT, inputs: str = '["P3HT content (%)", "D1 content (%)"]',
               objective: str = P3HT_OUTPUT) -> str:
    return f"""\
campaign: pool-test
space:
  pool:
    dataset: "{dataset}"
    inputs: {inputs}
objectives:
  - name: "{objective}"
    direction: maximize
budget:
  experiments: 5
"""


def _problems(text: str, source: str = "c.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_campaign(text, source)
    err = info.value
    assert err.source == source
    assert str(err).startswith(f"{source}: {len(err.problems)} problem")
    for p in err.problems:
        assert p in str(err)
    return err.problems


def _line_of(problem: str) -> int:
    match = re.match(r"^[^:]+:(\d+)", problem)
    assert match, f"no line number in {problem!r}"
    return int(match.group(1))


# --- the shipped configs -----------------------------------------------------------------------


def test_there_are_shipped_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    spec = load_campaign(path)
    assert isinstance(spec, Campaign)
    assert spec.campaign and spec.space.input_names
    if spec.space.pool is not None:  # datasets resolve against the config's folder, not the cwd
        assert spec.space.pool.dataset.is_absolute() and spec.space.pool.dataset.is_file()
        assert spec.space.pool.dataset.is_relative_to(ROOT.resolve())
    assert spec.objectives and spec.budget.experiments >= 1
    assert {i.role for i in spec.instruments} == {"synthesis", "characterization"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_parses_from_text(path):
    spec = parse_campaign(path.read_text(), str(path), base_dir=path.parent)
    assert spec == load_campaign(path)


def test_liang_configs_are_pools_named_after_their_file():
    liang = [p for p in CONFIGS if p.stem.endswith("_replay")]
    assert len(liang) >= 5
    for path in liang:
        spec = load_campaign(path)
        assert spec.campaign == path.stem
        assert spec.space.pool.dataset.parent == (ROOT / "data" / "liang2021").resolve()


def test_p3ht_config_contents():
    spec = load_campaign(ROOT / "configs" / "p3ht_replay.yaml")
    assert spec.space.pool.inputs == P3HT_INPUTS
    assert spec.objective_names == [P3HT_OUTPUT]
    assert spec.objectives[0].direction == "maximize"
    assert spec.approval.policy == "auto"
    assert spec.instrument("synthesis").name == "synthesizer"


def test_missing_campaign_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_campaign(tmp_path / "nope.yaml")
    assert "no such campaign file" in str(info.value)


# --- datasets resolve relative to the file ---------------------------------------------------------


def test_dataset_resolved_relative_to_yaml_folder(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(P3HT, tmp_path / "data" / "blend.csv")
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "c.yaml"
    path.write_text(_pool_yaml(dataset="../data/blend.csv"))
    spec = load_campaign(path)
    assert spec.space.pool.dataset == (tmp_path / "data" / "blend.csv").resolve()


def test_missing_dataset_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_pool_yaml(dataset="absent.csv"))
    with pytest.raises(SpecError) as info:
        load_campaign(path)
    (problem,) = info.value.problems
    assert "dataset file not found" in problem
    assert "space.pool.dataset" in problem
    assert _line_of(problem) == 4


def test_spec_error_is_an_athanor_error():
    assert issubclass(SpecError, AthanorError)


# --- malformed files ------------------------------------------------------------------------------


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("campaign: x\nseed: 1\nspace:\n  pool: [1, 2\nbudget:\n  experiments: 3\n")
    with pytest.raises(SpecError) as info:
        load_campaign(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}:")
    assert "malformed YAML" in problem
    assert problem.startswith(f"{path}:5:7: ")  # line and column of the offending token


def test_malformed_yaml_bad_indentation():
    problems = _problems("campaign: x\nspace:\n  pool:\n    dataset: a\n   inputs: [b]\n")
    assert len(problems) == 1
    assert "malformed YAML" in problems[0]
    assert _line_of(problems[0]) == 5


def test_malformed_yaml_stray_mapping_value():
    (problem,) = _problems("campaign: x\nseed: 1\n  bad: 2\n")
    assert problem.startswith("c.yaml:3:")
    assert "mapping values are not allowed" in problem


def test_not_a_mapping():
    problems = _problems("- just\n- a list\n")
    assert len(problems) == 1 and "mapping" in problems[0]


# --- unknown keys ---------------------------------------------------------------------------------


def test_unknown_top_level_key():
    text = _pool_yaml() + "colour: blue\n"
    (problem,) = _problems(text)
    assert "unknown key 'colour'" in problem
    assert ": colour:" in problem
    assert _line_of(problem) == 11


def test_unknown_nested_keys_with_paths_and_lines():
    text = _pool_yaml().replace("    direction: maximize\n", "    direction: maximize\n    weight: 2\n")
    text = text.replace("  experiments: 5\n", "  experiments: 5\n  hours: 3\n")
    problems = _problems(text)
    assert len(problems) == 2
    weight = next(p for p in problems if "'weight'" in p)
    hours = next(p for p in problems if "'hours'" in p)
    assert "objectives.0.weight" in weight and _line_of(weight) == 9
    assert "budget.hours" in hours and _line_of(hours) == 12


def test_unknown_key_with_block_value_names_the_key_line():
    text = _pool_yaml() + "extras:\n  a: 1\n  b: 2\n"
    (problem,) = _problems(text)
    assert "unknown key 'extras'" in problem
    assert _line_of(problem) == 11


# --- composition ------------------------------------------------------------------------------------


def _composition_yaml(elements: str) -> str:
    return f"""\
campaign: comp
space:
  composition:
    elements:
{elements}
objectives:
  - name: moment
    direction: maximize
budget:
  experiments: 5
"""


def test_valid_composition():
    spec = parse_campaign(_composition_yaml("      Fe: [0.2, 0.8]\n      Co: [0.0, 0.5]\n      Ni: [0.1, 0.4]"))
    assert spec.space.input_names == ["Fe", "Co", "Ni"]
    assert spec.space.composition.elements["Co"] == (0.0, 0.5)


def test_unknown_element():
    (problem,) = _problems(_composition_yaml("      Fe: [0.0, 1.0]\n      Xx: [0.0, 1.0]"))
    assert "unknown element 'Xx'" in problem
    assert "space.composition.elements" in problem
    assert _line_of(problem) == 5


def test_composition_lower_bounds_sum_above_one():
    (problem,) = _problems(_composition_yaml("      Fe: [0.6, 1.0]\n      Co: [0.5, 1.0]"))
    assert "bounds cannot be met" in problem
    assert "lower bounds sum to 1.1" in problem
    assert "space.composition.elements" in problem


def test_composition_upper_bounds_sum_below_one():
    (problem,) = _problems(_composition_yaml("      Fe: [0.0, 0.3]\n      Co: [0.0, 0.3]\n      Ni: [0.0, 0.3]"))
    assert "bounds cannot be met" in problem
    assert "upper bounds to 0.9" in problem


def test_composition_bounds_exactly_one_allowed():
    spec = parse_campaign(_composition_yaml("      Fe: [0.5, 0.5]\n      Co: [0.5, 0.5]"))
    assert spec.space.composition.elements == {"Fe": (0.5, 0.5), "Co": (0.5, 0.5)}


def test_composition_element_bound_out_of_range():
    (problem,) = _problems(_composition_yaml("      Fe: [0.0, 1.2]\n      Co: [0.0, 1.0]"))
    assert "Fe" in problem and "0 <= low <= high <= 1" in problem


def test_composition_needs_two_elements():
    (problem,) = _problems(_composition_yaml("      Fe: [1.0, 1.0]"))
    assert "space.composition.elements" in problem


# --- parameters and objectives ------------------------------------------------------------------------


def _params_yaml(params: str, objectives: str = "  - name: y\n    direction: maximize\n") -> str:
    return f"campaign: p\nspace:\n  parameters:\n{params}objectives:\n{objectives}budget:\n  experiments: 5\n"


CONT = "    - type: continuous\n      name: {name}\n      low: {low}\n      high: {high}\n"


@pytest.mark.parametrize("low,high", [(5, 5), (5, 1), (0, ".inf")])
def test_continuous_low_not_below_high(low, high):
    (problem,) = _problems(_params_yaml(CONT.format(name="T", low=low, high=high)))
    assert "bounds cannot be met" in problem
    assert "space.parameters.0" in problem
    assert "continuous" not in problem.split(":")[2]  # the union tag is dropped from the path
    assert _line_of(problem) == 4


def test_valid_parameters():
    text = _params_yaml(CONT.format(name="T", low=300, high=900)
                        + "    - type: integer\n      name: n\n      low: 1\n      high: 1\n"
                        + "    - type: categorical\n      name: s\n      choices: [a, b]\n")
    spec = parse_campaign(text)
    assert spec.space.input_names == ["T", "n", "s"]


def test_duplicate_input_names():
    problems = _problems(_params_yaml(CONT.format(name="T", low=0, high=1) + CONT.format(name="T", low=0, high=2)))
    assert len(problems) == 1 and "unique" in problems[0]


def test_categorical_choices_distinct():
    (problem,) = _problems(_params_yaml("    - type: categorical\n      name: s\n      choices: [a, a]\n"))
    assert "distinct" in problem


def test_target_objective_without_tolerance():
    text = _params_yaml(CONT.format(name="T", low=0, high=1),
                        objectives="  - name: y\n    direction: target\n    target: 3.0\n")
    (problem,) = _problems(text)
    assert "needs both 'target' and 'tolerance'" in problem
    assert "objectives.0" in problem
    assert _line_of(problem) == 9


def test_target_objective_with_tolerance_is_valid():
    text = _params_yaml(CONT.format(name="T", low=0, high=1),
                        objectives="  - name: y\n    direction: target\n    target: 3.0\n    tolerance: 0.1\n")
    spec = parse_campaign(text)
    assert spec.objectives[0].tolerance == 0.1


def test_target_on_maximize_rejected():
    text = _params_yaml(CONT.format(name="T", low=0, high=1),
                        objectives="  - name: y\n    direction: maximize\n    target: 3.0\n")
    (problem,) = _problems(text)
    assert "only applies to direction 'target'" in problem


def test_empty_space_rejected():
    (problem,) = _problems("campaign: e\nspace: {}\nobjectives:\n  - name: y\n    direction: maximize\n"
                           "budget:\n  experiments: 1\n")
    assert "empty" in problem


# --- pool columns ----------------------------------------------------------------------------------


def test_pool_column_missing_names_column_and_line():
    text = _pool_yaml(inputs='\n      - "P3HT content (%)"\n      - "Viscosity"')
    (problem,) = _problems(text)
    assert "'Viscosity'" in problem
    assert "P3HT.csv" in problem
    assert "space.pool.inputs.1" in problem
    assert _line_of(problem) == 7


def test_pool_objective_column_missing():
    text = _pool_yaml(objective="Brightness")
    (problem,) = _problems(text)
    assert "'Brightness'" in problem and "objectives.0.name" in problem
    assert _line_of(problem) == 7


def test_pool_several_missing_columns_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_pool_yaml(inputs='["Viscosity", "D1 content (%)", "Gloss"]', objective="Brightness"))
    with pytest.raises(SpecError) as info:
        load_campaign(path)
    problems = info.value.problems
    assert len(problems) == 3
    assert all(p.startswith(f"{path}:") for p in problems)
    assert [_line_of(p) for p in problems] == [5, 5, 7]


def test_missing_column_reported_with_other_problems():
    text = _pool_yaml(inputs='["Viscosity"]').replace("experiments: 5", "experiments: 0")
    problems = _problems(text)
    assert len(problems) == 2
    assert any("'Viscosity'" in p for p in problems) and any("budget.experiments" in p for p in problems)


def test_pool_with_parameters_rejected():
    text = _pool_yaml().replace("space:\n", "space:\n  parameters:\n" + CONT.format(name="T", low=0, high=1))
    (problem,) = _problems(text)
    assert "cannot be combined" in problem


# --- many problems in one error ---------------------------------------------------------------------------


def test_several_problems_reported_at_once():
    text = """\
campaign: "bad name!"
space:
  parameters:
    - type: continuous
      name: T
      low: 10
      high: 1
    - type: integer
      name: n
      low: 0
      high: 3
      step: 1
objectives:
  - name: y
    direction: target
    target: 1.0
budget:
  experiments: 0
batch_size: 0
world:
  failure_rate: 1.5
"""
    problems = _problems(text)
    assert len(problems) == 7
    joined = "\n".join(problems)
    for needle in ("campaign", "space.parameters.0", "space.parameters.1.step", "objectives.0",
                   "budget.experiments", "batch_size", "world.failure_rate"):
        assert needle in joined
    assert sorted(_line_of(p) for p in problems) == [1, 4, 12, 14, 18, 19, 21]
