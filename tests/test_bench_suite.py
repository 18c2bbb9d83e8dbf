"""The designer benchmark suite: its manifest and split, the one-hot encoding, batch and asynchronous
campaigns with pending rows, and the plain BoTorch baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import optimizers as bench  # noqa: E402
from benchmarks import suite  # noqa: E402
from benchmarks.adapters import BenchError, DesignerSpec, load_problem, resolve  # noqa: E402

from athanor.planners.space import DesignSpace  # noqa: E402
from athanor.spec import PoolSpace, Space  # noqa: E402


def test_the_suite_has_fifteen_datasets_split_once_with_sources() -> None:
    datasets = suite.load_suite()
    assert len(datasets) >= 15
    halves = {h: [d for d in datasets.values() if d.half == h] for h in suite.HALVES}
    assert len(halves["confirmation"]) >= 6 and len(halves["development"]) >= 6
    # Defaults were tuned on Liang's five before: they may only ever be development data.
    assert all(d.half == "development" for d in datasets.values() if "liang2021" in str(d.path))
    # The two OPV blend sets share their 1,040 blends: one group, one half.
    assert datasets["photo_pce10"].half == datasets["photo_wf3"].half
    readme = (ROOT / "data" / "suite" / "README.md").read_text()
    for d in datasets.values():
        frame = pd.read_csv(d.path, encoding="utf-8-sig")
        assert d.objective in frame.columns
        assert frame[d.objective].notna().sum() >= 90
        if "liang2021" not in str(d.path):
            assert d.path.name in readme  # each file's source, licence and citation are written down


def test_sha256_sums_match_the_files() -> None:
    import hashlib

    folder = ROOT / "data" / "suite"
    for line in (folder / "SHA256SUMS").read_text().split("\n"):
        if line:
            digest, name = line.split()
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_manifest_mistakes_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    bad = tmp_path / "suite.yaml"
    bad.write_text("datasets:\n  a: {file: a.csv, objective: y, direction: max, half: tuning}\n")
    with pytest.raises(BenchError, match="dataset 'a': half must be one of"):
        suite.load_suite(bad)
    bad.write_text("datasets:\n  a: {file: nowhere.csv, objective: y, direction: max, half: development}\n")
    with pytest.raises(BenchError, match="dataset 'a': no file"):
        suite.load_suite(bad)
    bad.write_text("datasets:\n  a: {file: a.csv, direction: max, half: development}\n")
    with pytest.raises(BenchError, match="dataset 'a' lacks objective"):
        suite.load_suite(bad)


def test_one_hot_encoding_agrees_with_pandas(tmp_path: Path) -> None:
    d = suite.load_suite()["buchwald_hartwig"]
    path, inputs = suite.encode(d, tmp_path)
    encoded = pd.read_csv(path)
    raw = pd.read_csv(d.path)
    dummies = pd.get_dummies(raw.drop(columns=[d.objective]).astype(str)).astype(float)
    assert len(inputs) == dummies.shape[1] == 4 + 22 + 3 + 15
    ours = sorted(map(tuple, encoded[inputs].to_numpy().T))
    theirs = sorted(map(tuple, dummies.to_numpy().T))
    assert ours == theirs
    assert np.allclose(encoded[d.objective], raw[d.objective])
    # Empty cells (a reaction run without ligand or base) are a category of their own.
    d = suite.load_suite()["suzuki_miyaura"]
    path, inputs = suite.encode(d, tmp_path)
    raw = pd.read_csv(d.path)
    assert raw["ligand_smiles"].isna().any()
    sizes = raw.drop(columns=[d.objective]).nunique(dropna=False)
    assert len(inputs) == sizes.sum()
    assert (pd.read_csv(path)[inputs].sum(axis=1) == len(sizes)).all()  # one category per column per row
    # A one-hot pool sums to a constant per row, but it is no composition: nothing is warped as fractions.
    pool = load_problem(path, inputs, d.objective, "max")
    space = DesignSpace(Space(pool=PoolSpace(dataset=path, inputs=inputs)), pool.X)
    assert space.fraction_dims == []


def test_unknown_dataset_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert suite.main(["--datasets", "nonesuch", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "no dataset nonesuch" in err and "Traceback" not in err


def test_batch_suffixes_and_strategy_options() -> None:
    spec = resolve("athanor[warp_outputs=false;kernel=rbf]@q4x2")
    assert (spec.kind, spec.batch, spec.in_flight) == ("strategy", 4, 2)
    assert dict(spec.options) == {"warp_outputs": False, "kernel": "rbf"}
    assert (resolve("baybe@q4").batch, resolve("baybe@q4").in_flight) == (4, 1)
    assert resolve("botorch").kind == "botorch"
    for bad, why in [("botorch@q4", "one row at a time"), ("random@q2", "one row at a time"),
                     ("athanor@q0", "batch suffix"), ("athanor@4", "batch suffix"),
                     ("baybe[x=1]", "takes no options"), ("athanor[nonsense]", "is not key=value")]:
        with pytest.raises(BenchError, match=why):
            resolve(bad)


class Recorder:
    """A designer that takes the lowest free rows and writes down what it was shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], list[int], int]] = []

    def next_rows(self, measured, values, pending, q):
        self.calls.append((list(measured), list(pending), q))
        taken = set(measured) | set(pending)
        return [r for r in range(1000) if r not in taken][:q]


@pytest.fixture()
def small_pool(tmp_path: Path):
    frame = pd.DataFrame({"x": np.arange(40.0), "y": np.sin(np.arange(40.0))})
    frame.to_csv(tmp_path / "p.csv", index=False)
    return load_problem(tmp_path / "p.csv", ["x"], "y", "max")


def test_two_batches_in_flight_see_the_previous_batch_as_pending(small_pool, monkeypatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(bench, "make_designer", lambda spec, pool, seed: recorder)
    picks, latencies = bench.run_campaign(DesignerSpec("x", "strategy", "bayesian", batch=4, in_flight=2),
                                          small_pool, [30, 31], budget=16, seed=0)
    assert len(picks) == 16 and len(set(picks)) == 16 and len(latencies) == 4  # 14 rows: 4 + 4 + 4 + 2
    (m1, p1, q1), (m2, p2, q2), (m3, p3, q3), (m4, p4, q4) = recorder.calls
    assert (m1, p1) == ([30, 31], [])                   # nothing in flight yet
    assert (m2, p2) == ([30, 31], picks[2:6])           # batch 1 still being measured
    assert (m3, p3) == ([30, 31, *picks[2:6]], picks[6:10])
    assert (m4, p4, q4) == ([30, 31, *picks[2:10]], picks[10:14], 2)  # the budget's remainder


def test_synchronous_batches_wait_for_their_results(small_pool, monkeypatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(bench, "make_designer", lambda spec, pool, seed: recorder)
    picks, _ = bench.run_campaign(DesignerSpec("x", "strategy", "bayesian", batch=4), small_pool, [0, 1], 10, 0)
    assert [len(m) for m, _, _ in recorder.calls] == [2, 6] and all(not p for _, p, _ in recorder.calls)


def test_a_designer_that_repeats_a_pending_row_is_caught(small_pool, monkeypatch) -> None:
    class Careless(Recorder):
        def next_rows(self, measured, values, pending, q):
            return (pending or [5, 6, 7, 8])[:q]

    monkeypatch.setattr(bench, "make_designer", lambda spec, pool, seed: Careless())
    with pytest.raises(BenchError, match="already measured, pending or outside the pool"):
        bench.run_campaign(DesignerSpec("x", "strategy", "bayesian", batch=4, in_flight=2), small_pool, [0, 1], 14, 0)


def test_plain_botorch_finds_the_top_of_a_smooth_pool(small_pool) -> None:
    result = bench.run_benchmark(small_pool.dataset, ["x"], "y", "max", budget=12, repeats=2,
                                 designers="botorch,random", out=None)
    entry = result["designers"]["botorch"]
    assert entry["proposals"] == 20 and entry["ef_mean"] > 1.0  # better than drawing at random
    for picks in entry["picks"]:
        assert len(set(picks)) == 12

