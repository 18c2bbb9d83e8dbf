"""The optimizer benchmark: exact random baseline, EF/AF arithmetic, and a tiny end-to-end run.

Uses only athanor's own space-filling strategies (sobol, simulated random), so neither BayBE nor Ax
is needed; benchmarks/ is not an installed package, so it is imported from the checkout.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import optimizers as bench  # noqa: E402
from benchmarks.adapters import BenchError, resolve  # noqa: E402

INPUTS = ["a (x)", "b, y", "c"]  # a space, parentheses and a comma, as in the real datasets
OBJECTIVE = "score (S/cm)"


@pytest.fixture()
def pool_csv(tmp_path: Path) -> Path:
    """30 distinct rows plus two duplicates of row 0 (averaged away: the pool stays 30 rows)."""
    rng = np.random.default_rng(7)
    X = rng.random((30, 3))
    y = -((X - 0.7) ** 2).sum(axis=1)
    frame = pd.DataFrame(X, columns=INPUTS)
    frame[OBJECTIVE] = y
    extra = frame.iloc[[0, 0]].copy()
    extra[OBJECTIVE] = [y[0] - 1.0, y[0] + 1.0]  # averages back to y[0]
    path = tmp_path / "pool.csv"
    pd.concat([frame, extra]).to_csv(path, index=False)
    return path


def test_random_curve_is_i_over_n() -> None:
    curve = bench.random_curve(30, 12)
    assert np.array_equal(curve, np.arange(1, 13) / 30)


def test_random_curve_matches_the_hypergeometric_mean() -> None:
    """E[hits]/K for i draws without replacement from N rows with K marked is i/N, for any K."""
    from scipy.stats import hypergeom

    n, k = 40, 3
    for i in range(1, n + 1):
        hits = np.arange(k + 1)
        mean = float(np.dot(hits, hypergeom.pmf(hits, n, k, i)))
        assert mean / k == pytest.approx(bench.random_curve(n, i)[-1])


def test_enhancement_of_random_is_one() -> None:
    assert np.allclose(bench.enhancement(bench.random_curve(94, 50), 94), 1.0)
    summary = bench.summarize(bench.random_curve(94, 50), 94, [])
    assert summary["ef_mean"] == 1.0 and summary["latency_s_median"] == 0.0


def test_acceleration_on_a_hand_made_curve() -> None:
    curve = np.array([0.0, 0.2, 0.4, 0.6, 0.79999, 0.8, 1.0])
    # random needs ceil(0.8 * 30) = 24 experiments; the curve first reaches 0.8 at i = 6
    assert bench.acceleration(curve, 30) == pytest.approx(24 / 6)
    assert bench.acceleration(np.array([0.1, 0.5, 0.7]), 30) is None
    assert bench.acceleration(np.array([0.9]), 94) == pytest.approx(math.ceil(0.8 * 94) / 1)
    # random reaches 0.8 exactly when it needs to: AF = 1
    assert bench.acceleration(bench.random_curve(30, 30), 30) == pytest.approx(1.0)


def test_top_rows_and_found_curve() -> None:
    y = np.array([5.0, 1.0, 9.0, 3.0, 7.0] * 8)  # 40 rows: the top 5 % is 2 rows
    assert list(bench.top_rows(y, "max")) == [2, 7]  # a tie at the cut goes to the earlier row
    assert list(bench.top_rows(y, "min")) == [1, 6]
    assert list(bench.found_curve([0, 2, 3, 7], np.array([2, 7]))) == [0.0, 0.5, 0.5, 1.0]


def test_inputs_given_whole_repeated_or_as_comma_lists() -> None:
    header = [*INPUTS, OBJECTIVE]
    assert bench.resolve_inputs(header, ["a (x)", "b, y", "c"], OBJECTIVE) == INPUTS
    assert bench.resolve_inputs(header, ["a (x),c", "b, y"], OBJECTIVE) == ["a (x)", "c", "b, y"]
    assert bench.resolve_inputs(header, None, OBJECTIVE) == INPUTS
    with pytest.raises(BenchError, match="no column"):
        bench.resolve_inputs(header, ["a (x),d"], OBJECTIVE)


def test_designer_names() -> None:
    assert resolve("random").kind == "random"
    assert resolve("sobol").strategy == "sobol"
    assert resolve("athanor:random").strategy == "random"  # simulated random sampling
    assert resolve("baybe").kind == "baybe"
    with pytest.raises(BenchError, match="unknown designer"):
        resolve("nonesuch")


def test_tiny_run_writes_json_and_plot(pool_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = bench.run_benchmark(pool_csv, INPUTS, OBJECTIVE, "max", budget=10, repeats=3,
                                 designers="sobol,random", out=out, seed=1)
    written = json.loads((out / "bench.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert (out / "top5.png").stat().st_size > 1000
    for key in ("dataset", "n_pool", "budget", "repeats", "versions", "designers"):
        assert key in written
    assert written["n_pool"] == 30 and written["n_top"] == 2 and written["budget"] == 10
    assert {"torch", "botorch", "baybe", "ax-platform"} <= set(written["versions"])
    assert list(written["designers"]) == ["sobol", "random"]
    for entry in written["designers"].values():
        assert len(entry["top5"]) == len(entry["ef"]) == 10
        assert {"ef_mean", "af_0.8", "latency_s_median"} <= set(entry)
        assert all(0.0 <= v <= 1.0 for v in entry["top5"])
    assert written["designers"]["random"]["top5"] == pytest.approx(list(np.arange(1, 11) / 30), abs=1e-6)
    assert written["designers"]["random"]["af_0.8"] is None  # random needs 24 > 10 experiments
    assert written["designers"]["sobol"]["proposals"] == 3 * 8
    assert written["designers"]["sobol"]["af_0.8"] is None or written["designers"]["sobol"]["af_0.8"] > 0


def test_same_seed_same_curve_and_shared_initial_rows(pool_csv: Path) -> None:
    args = dict(dataset=pool_csv, inputs=INPUTS, objective=OBJECTIVE, direction="max", budget=12,
                repeats=4, out=None)
    first = bench.run_benchmark(designers="sobol,athanor:random,random", seed=3, **args)
    again = bench.run_benchmark(designers="sobol,athanor:random", seed=3, **args)
    for name in ("sobol", "athanor:random"):
        assert first["designers"][name]["top5"] == again["designers"][name]["top5"]
        assert first["designers"][name]["picks"] == again["designers"][name]["picks"]
    starts = first["initial_rows"]
    assert len({tuple(s) for s in starts}) > 1  # repeats differ from each other
    for name in ("sobol", "athanor:random"):
        for start, picks in zip(starts, first["designers"][name]["picks"]):
            assert picks[:2] == start
            assert len(set(picks)) == len(picks) == 12  # never a row twice
    other = bench.run_benchmark(designers="sobol", seed=4, **args)
    assert other["initial_rows"] != starts


def test_bad_requests_fail_clearly(pool_csv: Path) -> None:
    with pytest.raises(BenchError, match="budget"):
        bench.run_benchmark(pool_csv, INPUTS, OBJECTIVE, "max", 31, 1, "sobol", None)
    with pytest.raises(BenchError, match="direction"):
        bench.run_benchmark(pool_csv, INPUTS, OBJECTIVE, "up", 5, 1, "sobol", None)


def test_script_runs_from_the_command_line(pool_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "optimizers.py"), "--dataset", str(pool_csv),
         "--inputs-all-but-objective", "--objective", OBJECTIVE, "--direction", "max", "--budget", "6",
         "--repeats", "2", "--designers", "sobol,random", "--out", str(out), "--quiet", "--threads", "0"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "bench.json").read_text())["inputs"] == INPUTS
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "optimizers.py"), "--dataset", str(pool_csv),
                          "--inputs", "nope", "--objective", OBJECTIVE, "--direction", "max", "--budget", "6",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no column 'nope'" in bad.stderr


def test_add_parser_registers_a_sub_command() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="athanor")
    bench_parser = parser.add_subparsers(dest="command").add_parser("bench")
    bench.add_parser(bench_parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["bench", "optimizers", "--dataset", "x.csv", "--inputs", "a", "--inputs", "b",
                              "--objective", "y", "--direction", "min", "--budget", "5", "--out", "o"])
    assert args.func is not None and args.inputs == ["a", "b"] and args.budget == 5


@pytest.mark.parametrize("designer, module", [("baybe", "baybe"), ("ax", "ax")])
def test_missing_optional_library_names_the_extra(pool_csv: Path, monkeypatch: pytest.MonkeyPatch,
                                                  designer: str, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if not installed
    with pytest.raises(BenchError, match=r"pip install -e \.\[bench\]"):
        bench.run_benchmark(pool_csv, INPUTS, OBJECTIVE, "max", 5, 1, f"sobol,{designer}", None)


def test_athanor_means_the_bayesian_strategy() -> None:
    from athanor import registry

    if "bayesian" in registry.available("athanor.strategies"):
        assert resolve("athanor").strategy == "bayesian"
    else:
        with pytest.raises(BenchError, match="'bayesian'"):
            resolve("athanor")
