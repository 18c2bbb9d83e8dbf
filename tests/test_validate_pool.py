"""`athanor validate` knows the data: a pool whose rows cannot run is rejected before anything starts.

Inputs and measured columns must hold numbers, the file must have rows, and enough distinct input rows
to fill the first batch; every problem names the file, the column and the CSV line (header = line 1).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from athanor.cli import main
from athanor.errors import AthanorError, SpecError
from athanor.pool import cell_problems, load_pool, read_table
from athanor.spec import load_campaign, parse_campaign
from conftest import write_campaign

HEADER = "a,b,y,z\n"
ROWS = "1,2,10,0\n3,4,20,1\n5,6,30,2\n7,8,40,3\n9,10,50,4\n"


def _campaign(tmp_path: Path, csv_text: str, *, batch_size: int = 2, extra: str = "", **kwargs) -> Path:
    dataset = tmp_path / "pool.csv"
    dataset.write_text(csv_text)
    config = write_campaign(tmp_path / "c.yaml", dataset=dataset, inputs=["a", "b"], objective="y",
                            batch_size=batch_size, **kwargs)
    if extra:
        config.write_text(config.read_text() + extra)
    return config


def _problems(config: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_campaign(config)
    return info.value.problems


def _yaml_line(config: Path, needle: str) -> int:
    """The campaign file's line (1-based) of the first line containing `needle`."""
    return next(i for i, line in enumerate(config.read_text().splitlines(), 1) if needle in line)


# --- measured columns ---------------------------------------------------------------------------------


def test_text_in_an_objective_column_names_file_column_and_line(tmp_path):
    config = _campaign(tmp_path, HEADER + "1,2,10,0\n3,4,high,1\n5,6,30,2\n")
    (problem,) = _problems(config)
    assert problem.startswith(f"{config}:{_yaml_line(config, '- name:')}: objectives.0.name: ")
    assert "pool.csv line 3, column 'y': value 'high' is not a number" in problem


def test_text_in_an_outcome_constraint_column_is_reported_at_the_constraint(tmp_path):
    config = _campaign(tmp_path, HEADER + "1,2,10,0\n3,4,20,1\n5,6,30,oops\n",
                       extra='outcome_constraints:\n  - name: "z"\n    upper: 3\n')
    (problem,) = _problems(config)
    line = _yaml_line(config, 'name: "z"')
    assert f":{line}: outcome_constraints.0.name: " in problem
    assert "pool.csv line 4, column 'z': value 'oops' is not a number" in problem


def test_infinite_objective_is_rejected(tmp_path):
    (problem,) = _problems(_campaign(tmp_path, HEADER + "1,2,10,0\n3,4,inf,1\n5,6,30,2\n"))
    assert "line 3, column 'y': value inf is not a finite number" in problem


def test_some_empty_objective_cells_are_allowed(tmp_path):
    """The replay world fails the sample of a row with no reading and the campaign goes on (see
    test_campaign.py::test_nan_reading_fails_one_sample_and_keeps_the_rest), so gaps are not an error."""
    config = _campaign(tmp_path, HEADER + "1,2,10,0\n3,4,,1\n5,6,30,2\n")
    spec = load_campaign(config)
    pool = load_pool(spec.space.pool.dataset, ["a", "b"], ["y"])
    assert len(pool) == 3 and pool["y"].isna().sum() == 1


def test_an_objective_column_with_no_values_at_all_is_rejected(tmp_path):
    (problem,) = _problems(_campaign(tmp_path, HEADER + "1,2,,0\n3,4,,1\n5,6,,2\n"))
    assert "pool.csv line 2, column 'y': no row has a value" in problem


# --- input columns ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell, message", [
    ("lots", "input 'lots' is not a number"),
    ("", "input is missing"),
    ("NaN", "input is missing"),
    ("inf", "input inf is not a finite number"),
    ("-inf", "input -inf is not a finite number"),
])
def test_a_bad_input_cell_is_reported_at_its_column_and_line(tmp_path, cell, message):
    config = _campaign(tmp_path, HEADER + f"1,2,10,0\n3,4,20,1\n5,{cell},30,2\n7,8,40,3\n")
    (problem,) = _problems(config)
    assert problem.startswith(f"{config}:{_yaml_line(config, 'inputs:')}: space.pool.inputs.1: ")
    assert f"pool.csv line 4, column 'b': {message}" in problem


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    # pandas skips the blank line and reads the quoted two-line cell as one row; the line is the file's
    (problem,) = _problems(_campaign(tmp_path, HEADER + '1,2,10,0\n\n3,4,"twenty\none",1\n5,6,30,2\n'))
    assert "line 4, column 'y': value 'twenty\\none' is not a number" in problem
    (problem,) = _problems(_campaign(tmp_path, HEADER + '1,2,"10\n",0\n3,4,20,1\n\n5,x,30,2\n'))
    assert "line 6, column 'b': input 'x' is not a number" in problem


def test_one_line_per_column_with_the_other_bad_lines_counted(tmp_path):
    rows = "".join(f"{i},{'?' if i % 2 else i},{'-' if i > 3 else i},0\n" for i in range(1, 11))
    problems = _problems(_campaign(tmp_path, HEADER + rows))
    assert len(problems) == 2
    assert "line 2, column 'b': input '?' is not a number (also lines 4, 6, 8 and 1 more)" in problems[0]
    assert "line 5, column 'y': value '-' is not a number (also lines 6, 7, 8 and 3 more)" in problems[1]


def test_data_problems_come_with_the_other_problems_of_the_file(tmp_path):
    problems = _problems(_campaign(tmp_path, HEADER + "1,2,10,0\n3,x,20,1\n5,6,30,2\n", budget=0))
    assert any("budget.experiments" in p for p in problems)
    assert any("line 3, column 'b'" in p for p in problems)


def test_load_pool_raises_the_first_problem_of_the_same_check(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text(HEADER + "1,2,10,0\n3,4,x,1\n5,inf,30,2\n")
    problems = cell_problems(path, read_table(path), ["a", "b"], ["y"])
    assert [str(p) for p in problems] == ["line 4, column 'b': input inf is not a finite number",
                                          "line 3, column 'y': value 'x' is not a number"]
    with pytest.raises(AthanorError, match=re.escape(f"{path}: line 4, column 'b': input inf is not a finite")):
        load_pool(path, ["a", "b"], ["y"])
    with pytest.raises(AthanorError, match=re.escape(f"{path}: line 3, column 'y': value 'x' is not a number")):
        load_pool(path, ["a"], ["y"])


# --- rows ---------------------------------------------------------------------------------------------


def test_a_header_without_rows_is_rejected(tmp_path):
    config = _campaign(tmp_path, HEADER)
    (problem,) = _problems(config)
    assert problem.startswith(f"{config}:{_yaml_line(config, 'dataset:')}: space.pool.dataset: ")
    assert "pool.csv has a header but no data rows" in problem
    (problem,) = _problems(_campaign(tmp_path, HEADER + "\n\n"))  # blank lines are no rows either
    assert "no data rows" in problem


def test_fewer_distinct_rows_than_the_first_batch_is_rejected(tmp_path):
    # five rows, but repeated inputs collapse them into three pool rows
    rows = "1,2,10,0\n3,4,20,1\n1,2,12,2\n3,4,22,3\n5,6,30,4\n"
    config = _campaign(tmp_path, HEADER + rows, batch_size=4)
    (problem,) = _problems(config)
    assert problem.startswith(f"{config}:{_yaml_line(config, 'batch_size:')}: batch_size: ")
    assert "pool.csv has 3 distinct input rows (5 rows, repeated inputs averaged into one), fewer than " \
           "batch_size 4" in problem
    assert load_campaign(_campaign(tmp_path, HEADER + rows, batch_size=3)).batch_size == 3


def test_the_default_batch_size_counts_too(tmp_path):
    config = _campaign(tmp_path, HEADER + "1,2,10,0\n3,4,20,1\n5,6,30,2\n")
    config.write_text(re.sub(r"(?m)^batch_size: .*\n", "", config.read_text()))
    (problem,) = _problems(config)
    assert "space.pool.dataset: pool.csv has 3 distinct input rows, fewer than batch_size 4 (the default)" \
           in problem


def test_a_valid_pool_passes(tmp_path):
    spec = load_campaign(_campaign(tmp_path, HEADER + ROWS, batch_size=5))
    assert spec.batch_size == 5 and spec.space.pool.inputs == ["a", "b"]
    assert len(load_pool(spec.space.pool.dataset, ["a", "b"], ["y"])) == 5


def test_a_big_pool_validates_quickly(tmp_path):
    rows = "".join(f"{i % 97},{i},{i * 0.5},{i % 7}\n" for i in range(50_000))
    config = _campaign(tmp_path, HEADER + rows, batch_size=8)
    text = config.read_text()
    parse_campaign(text, str(config), base_dir=config.parent)  # warm imports
    start = time.perf_counter()
    spec = parse_campaign(text, str(config), base_dir=config.parent)
    assert time.perf_counter() - start < 0.5
    assert spec.batch_size == 8


# --- the command line ---------------------------------------------------------------------------------


def test_validate_exits_2_and_prints_each_problem(tmp_path, capsys):
    config = _campaign(tmp_path, HEADER + "1,2,10,0\n3,4,high,1\n5,x,30,2\n")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err
    assert "pool.csv line 3, column 'y': value 'high' is not a number" in err
    assert "pool.csv line 4, column 'b': input 'x' is not a number" in err
    assert "internal error" not in err and "Traceback" not in err
    assert main(["validate", str(_campaign(tmp_path, HEADER + ROWS))]) == 0
    assert ": ok" in capsys.readouterr().out


@pytest.mark.parametrize("csv_text", [HEADER, HEADER + "1,2,10,0\n3,4,high,1\n5,6,30,2\n"],
                         ids=["header-only", "text-objective"])
def test_run_with_a_bad_pool_creates_nothing(tmp_path, capsys, monkeypatch, csv_text):
    config = _campaign(tmp_path, csv_text)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "runs" / "mine"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    assert "pool.csv" in capsys.readouterr().err
    assert main(["run", str(config), "--quiet"]) == 2  # the default out folder is not made either
    err = capsys.readouterr().err
    assert "athanor: error:" in err and "pool.csv" in err and "internal error" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no athanor-error.log
