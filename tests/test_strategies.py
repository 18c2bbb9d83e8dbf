"""Design spaces, space-filling strategies, dataset pools and the replay world."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from athanor.errors import AthanorError
from athanor.planners.base import Observation, Strategy
from athanor.planners.random import RandomStrategy, SobolStrategy
from athanor.planners.space import DesignSpace, bounded_simplex
from athanor.simulators.base import InstrumentFault, SimulatedConditions
from athanor.simulators.replay import ReplayWorld, load_pool
from athanor.spec import Space

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover -- the numpy-random tests below cover the same ground
    given = None

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "liang2021"
P3HT_INPUTS = ["P3HT content (%)", "D1 content (%)", "D2 content (%)", "D6 content (%)", "D8 content (%)"]
P3HT_OUTPUT = "Conductivity (measured) (S/cm)"
PEROV_INPUTS = ["CsPbI", "FAPbI", "MAPbI"]
PEROV_OUTPUT = "Instability index"
TOL = 1e-12


# --- continuous, integer, categorical ---------------------------------------------------------------


MIXED = Space(parameters=[
    {"type": "continuous", "name": "T", "low": 300.0, "high": 900.0},
    {"type": "continuous", "name": "neg", "low": -1.5, "high": -1.25},
    {"type": "integer", "name": "n", "low": -2, "high": 3},
    {"type": "integer", "name": "one", "low": 7, "high": 7},
    {"type": "categorical", "name": "solvent", "choices": ["water", "ethanol", "toluene"]},
])


def test_from_unit_mixed_bounds_and_types():
    ds = DesignSpace(MIXED)
    assert ds.dim == 5 and not ds.is_pool
    u = np.random.default_rng(0).random((2000, 5))
    u[:5] = [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0.5] * 5, [1 - 1e-15] * 5, [1e-15] * 5]
    rows = ds.from_unit(u)
    assert len(rows) == 2000
    for row in rows:
        assert list(row) == ["T", "neg", "n", "one", "solvent"]
        assert type(row["T"]) is float and 300.0 <= row["T"] <= 900.0
        assert type(row["neg"]) is float and -1.5 <= row["neg"] <= -1.25
        assert type(row["n"]) is int and -2 <= row["n"] <= 3
        assert row["one"] == 7 and type(row["one"]) is int
        assert row["solvent"] in ("water", "ethanol", "toluene")
    assert {r["n"] for r in rows} == set(range(-2, 4))  # every integer is reachable
    assert {r["solvent"] for r in rows} == {"water", "ethanol", "toluene"}
    assert rows[0]["T"] == 300.0 and rows[0]["n"] == -2 and rows[0]["solvent"] == "water"
    assert rows[1]["n"] == 3 and rows[1]["solvent"] == "toluene" and rows[1]["T"] == pytest.approx(900.0)


def test_from_unit_is_monotone_and_linear_for_continuous():
    ds = DesignSpace(MIXED)
    u = np.zeros((3, 5))
    u[:, 0] = [0.0, 0.25, 0.5]
    rows = ds.from_unit(u)
    assert [r["T"] for r in rows] == pytest.approx([300.0, 450.0, 600.0])


def test_from_unit_integer_bins_are_even():
    space = Space(parameters=[{"type": "integer", "name": "n", "low": 0, "high": 3}])
    rows = DesignSpace(space).from_unit(np.linspace(0, 1, 4001)[:, None])
    counts = np.bincount([r["n"] for r in rows])
    assert len(counts) == 4
    assert counts.max() - counts.min() <= 2


def test_from_unit_single_point():
    rows = DesignSpace(MIXED).from_unit(np.array([0.5, 0.5, 0.5, 0.5, 0.5]))
    assert len(rows) == 1 and rows[0]["solvent"] == "ethanol" and rows[0]["T"] == 600.0


# --- composition --------------------------------------------------------------------------------------


BOUND_SETS = [
    {"Fe": (0.0, 1.0), "Co": (0.0, 1.0), "Ni": (0.0, 1.0)},
    {"Fe": (0.1, 0.8), "Co": (0.0, 0.5), "Ni": (0.2, 0.3)},
    {"Fe": (0.0, 0.4), "Co": (0.0, 0.35), "Ni": (0.0, 0.3)},  # highs sum to 1.05: tight from above
    {"Fe": (0.3, 0.9), "Co": (0.3, 0.9), "Ni": (0.35, 0.9)},  # lows sum to 0.95: tight from below
    {"Fe": (0.5, 0.5), "Co": (0.25, 0.25), "Ni": (0.25, 0.25)},  # a single point
    {"Fe": (0.0, 0.5), "Co": (0.0, 0.5)},  # highs sum to exactly 1
    {"Fe": (0.0, 0.0), "Co": (0.2, 1.0), "Ni": (0.0, 0.1), "Cu": (0.05, 0.9), "Al": (0.0, 1.0)},
    {"Li": (0.01, 0.02), "Mn": (0.0, 0.97), "O": (0.01, 0.98)},
]


def _check_composition(rows, elements):
    low = np.array([b[0] for b in elements.values()])
    high = np.array([b[1] for b in elements.values()])
    x = np.array([[row[e] for e in elements] for row in rows])
    assert np.isfinite(x).all()
    assert np.abs(x.sum(axis=1) - 1.0).max() <= 1e-9
    assert (x >= low - TOL).all(), (x - low).min()
    assert (x <= high + TOL).all(), (x - high).max()
    return x


@pytest.mark.parametrize("elements", BOUND_SETS, ids=lambda e: "-".join(f"{k}{v[0]}:{v[1]}" for k, v in e.items()))
def test_composition_sums_to_one_within_bounds(elements):
    space = Space(parameters=[{"type": "continuous", "name": "T", "low": 0.0, "high": 1.0}],
                  composition={"elements": elements})
    ds = DesignSpace(space)
    assert ds.dim == 1 + len(elements)
    u = np.random.default_rng(len(elements)).random((500, ds.dim))
    u[0], u[1] = 1e-300, 1.0
    u[2, 1:] = 0.0
    u[2, 1] = 0.999
    rows = ds.from_unit(u)
    x = _check_composition(rows, elements)
    assert all(0.0 <= r["T"] <= 1.0 for r in rows)
    if all(lo < hi for lo, hi in elements.values()) and sum(hi for _, hi in elements.values()) > 1.0:
        assert np.ptp(x, axis=0).max() > 0.01  # the space is not collapsed onto one point


def test_composition_origin_decodes_without_nan_warning():
    import warnings

    elements = {"Fe": (0.0, 1.0), "Co": (0.0, 1.0), "Ni": (0.0, 1.0)}
    ds = DesignSpace(Space(composition={"elements": elements}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows = ds.from_unit(np.zeros(3))
    _check_composition(rows, elements)


def test_composition_origin_still_valid():
    import warnings

    elements = {"Fe": (0.1, 1.0), "Co": (0.0, 0.2), "Ni": (0.0, 1.0)}
    ds = DesignSpace(Space(composition={"elements": elements}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = ds.from_unit(np.zeros((2, 3)))
    x = _check_composition(rows, elements)
    assert np.allclose(x[0], [0.45, 0.2, 0.35])  # even shares of 0.3; Co capped, its excess split


def test_composition_random_bounds_numpy():
    rng = np.random.default_rng(7)
    names = ["Fe", "Co", "Ni", "Cu", "Zn", "Al"]
    tested = 0
    while tested < 150:
        k = int(rng.integers(2, 7))
        low = rng.dirichlet(np.ones(k)) * rng.uniform(0.0, 1.0)
        high = np.minimum(1.0, low + rng.random(k) * rng.uniform(0.0, 1.0))
        if high.sum() < 1.0:
            continue
        elements = {n: (float(lo), float(hi)) for n, lo, hi in zip(names, low, high)}
        ds = DesignSpace(Space(composition={"elements": elements}))
        _check_composition(ds.from_unit(rng.random((20, k))), elements)
        tested += 1


if given is not None:

    @st.composite
    def _bounds_and_points(draw):
        k = draw(st.integers(2, 6))
        raw_low = draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))
        scale = draw(st.floats(0.0, 1.0))
        low = np.array(raw_low) / max(sum(raw_low), 1.0) * scale
        extra = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k)))
        high = np.minimum(1.0, low + extra)
        if high.sum() < 1.0:  # widen the last element just enough to make the bounds feasible
            high = high.copy()
            high[-1] = 1.0
        if high.sum() < 1.0:
            high = np.ones(k)
        u = np.array(draw(st.lists(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k), min_size=1, max_size=8)))
        return low, high, u

    @settings(max_examples=200, deadline=None, database=None)
    @given(_bounds_and_points())
    def test_bounded_simplex_property(case):
        low, high, u = case
        weights = -np.log1p(-np.clip(u, 0.0, 1.0 - 1e-12))
        sums = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, sums, out=np.full_like(weights, 1.0 / weights.shape[1]), where=sums > 0)
        x = bounded_simplex(weights, low, high)
        assert x.shape == u.shape
        assert np.abs(x.sum(axis=1) - 1.0).max() <= 1e-9
        assert (x >= low - TOL).all() and (x <= high + TOL).all()


def test_bounded_simplex_unbounded_is_identity():
    w = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    x = bounded_simplex(w, np.zeros(3), np.ones(3))
    assert np.allclose(x, w, atol=1e-15)


def test_bounded_simplex_lower_bounds_then_proportional():
    low = np.array([0.1, 0.2, 0.3])
    x = bounded_simplex(np.array([0.5, 0.25, 0.25]), low, np.ones(3))
    assert np.allclose(x, low + 0.4 * np.array([0.5, 0.25, 0.25]))


def test_bounded_simplex_water_filling():
    # Fe wants 80 % but is capped at 0.5; its excess goes to the others in proportion (1:1).
    x = bounded_simplex(np.array([0.8, 0.1, 0.1]), np.zeros(3), np.array([0.5, 1.0, 1.0]))
    assert np.allclose(x, [[0.5, 0.25, 0.25]])
    # a cap reached in the second round too
    x = bounded_simplex(np.array([0.8, 0.15, 0.05]), np.zeros(3), np.array([0.5, 0.3, 1.0]))
    assert np.allclose(x, [[0.5, 0.3, 0.2]])


def test_bounded_simplex_degenerate_cases():
    low = np.array([0.2, 0.3, 0.5])
    assert np.allclose(bounded_simplex(np.array([0.9, 0.05, 0.05]), low, low.copy()), low)
    x = bounded_simplex(np.array([[0.0, 0.0, 1.0]]), np.zeros(3), np.array([0.5, 0.5, 0.0]))
    assert np.allclose(x, [[0.5, 0.5, 0.0]])
    x = bounded_simplex(np.array([[0.0, 0.0, 0.0]]), np.zeros(3), np.ones(3))  # no preference: share evenly
    assert np.allclose(x, [[1 / 3, 1 / 3, 1 / 3]])


# --- pools and strategies ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def p3ht_pool():
    return load_pool(DATA / "P3HT.csv", P3HT_INPUTS, [P3HT_OUTPUT])


@pytest.fixture(scope="module")
def pool_space(p3ht_pool):
    space = Space(pool={"dataset": str(DATA / "P3HT.csv"), "inputs": P3HT_INPUTS})
    return DesignSpace(space, p3ht_pool[P3HT_INPUTS].to_numpy(dtype=float))


def test_pool_space_needs_rows():
    with pytest.raises(ValueError):
        DesignSpace(Space(pool={"dataset": str(DATA / "P3HT.csv"), "inputs": P3HT_INPUTS}))


def test_pool_space_shape(pool_space, p3ht_pool):
    assert pool_space.is_pool and pool_space.dim == 5
    unit = pool_space.pool_unit()
    assert unit.shape == (len(p3ht_pool), 5)
    assert unit.min() == 0.0 and unit.max() == 1.0
    assert pool_space.pool_inputs(3) == {k: float(v) for k, v in p3ht_pool.loc[3, P3HT_INPUTS].items()}


STRATEGIES = [RandomStrategy, SobolStrategy]


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.name)
def test_strategies_meet_protocol(cls, pool_space):
    assert isinstance(cls(pool_space), Strategy)


def _observe(candidates, values=False):
    return [Observation(inputs=c.inputs, pool_index=c.pool_index, values={"y": 1.0} if values else {})
            for c in candidates]


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.name)
def test_pool_proposals_never_repeat_and_exhaust(cls, pool_space):
    n_rows = len(pool_space.pool)
    strategy = cls(pool_space, seed=1)
    history, pending, seen = [], [], []
    sizes = []
    for call in range(200):
        batch = strategy.propose(history, 7, pending)
        sizes.append(len(batch))
        free = n_rows - len(history) - len(pending)
        assert len(batch) == min(7, free)
        for c in batch:
            assert 0 <= c.pool_index < n_rows
            assert c.inputs == pool_space.pool_inputs(c.pool_index)
            assert c.rationale
        seen += [c.pool_index for c in batch]
        assert len(seen) == len(set(seen)), "a pool row was proposed twice"
        if not batch:
            break
        # alternate: half go to history (measured), the rest stay pending
        history += _observe(batch[: len(batch) // 2], values=True)
        pending += _observe(batch[len(batch) // 2:])
    assert sorted(seen) == list(range(n_rows))
    assert sizes[-1] == 0 and sizes[-2] == (n_rows % 7 or 7)
    assert strategy.propose(history, 3, pending) == []


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.name)
def test_pool_proposals_capped_by_free_rows(cls, pool_space):
    n_rows = len(pool_space.pool)
    taken = [Observation(inputs={}, pool_index=i) for i in range(n_rows - 3)]
    batch = cls(pool_space, seed=0).propose(taken, 10, [])
    assert sorted(c.pool_index for c in batch) == [n_rows - 3, n_rows - 2, n_rows - 1]
    batch = cls(pool_space, seed=0).propose(taken[:5], n_rows, taken[5:])
    assert len(batch) == 3


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.name)
def test_pool_seeds(cls, pool_space):
    def run(seed):
        strategy, history, out = cls(pool_space, seed=seed), [], []
        for _ in range(3):
            batch = strategy.propose(history, 5, [])
            out.append([c.pool_index for c in batch])
            history += _observe(batch, values=True)
        return out

    assert run(11) == run(11)
    assert run(11) != run(12)
    assert cls(pool_space, seed=4).propose([], 6, []) == cls(pool_space, seed=4).propose([], 6, [])


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.name)
def test_pool_rows_in_history_without_values_are_still_taken(cls, pool_space):
    failed = [Observation(inputs={}, pool_index=i, failed=True) for i in range(0, 60, 2)]
    batch = cls(pool_space, seed=2).propose(failed, 20, [])
    assert not {c.pool_index for c in batch} & set(range(0, 60, 2))


CONT = Space(parameters=[
    {"type": "continuous", "name": "a", "low": 0.0, "high": 1.0},
    {"type": "continuous", "name": "b", "low": -5.0, "high": 5.0},
    {"type": "continuous", "name": "c", "low": 10.0, "high": 20.0},
])


def _points(candidates):
    return np.array([[c.inputs[k] for k in ("a", "b", "c")] for c in candidates])


def test_sobol_continues_the_sequence():
    ds = DesignSpace(CONT)
    strategy = SobolStrategy(ds, seed=5)
    first = strategy.propose([], 4, [])
    again = strategy.propose([], 4, [])
    assert _points(first).tolist() == _points(again).tolist()
    history = [Observation(inputs=c.inputs, values={"y": 0.0}) for c in first[:3]]
    pending = [Observation(inputs=first[3].inputs)]
    second = strategy.propose(history, 4, pending)
    assert not np.isclose(_points(first)[:, None, :], _points(second)[None, :, :]).all(axis=2).any()
    whole = strategy.propose([], 8, [])
    assert np.allclose(np.vstack([_points(first), _points(second)]), _points(whole))
    assert second[0].rationale == "sobol point 5"


def test_sobol_points_in_bounds_and_seeded():
    ds = DesignSpace(CONT)
    pts = _points(SobolStrategy(ds, seed=1).propose([], 16, []))
    assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= 1).all()
    assert (pts[:, 1] >= -5).all() and (pts[:, 1] <= 5).all()
    assert (pts[:, 2] >= 10).all() and (pts[:, 2] <= 20).all()
    # scrambled Sobol with 16 points puts exactly one point in each 1/16 stratum of every axis
    for j, (lo, hi) in enumerate([(0, 1), (-5, 5), (10, 20)]):
        strata = np.floor((pts[:, j] - lo) / (hi - lo) * 16).astype(int)
        assert sorted(strata) == list(range(16))
    other = _points(SobolStrategy(ds, seed=2).propose([], 16, []))
    assert not np.allclose(pts, other)


def test_random_continuous_seeded_and_continued():
    ds = DesignSpace(CONT)
    a = _points(RandomStrategy(ds, seed=3).propose([], 5, []))
    b = _points(RandomStrategy(ds, seed=3).propose([], 5, []))
    c = _points(RandomStrategy(ds, seed=4).propose([], 5, []))
    d = _points(RandomStrategy(ds, seed=3).propose([Observation(inputs={})] * 5, 5, []))
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_strategy_on_composition_space():
    elements = {"Fe": (0.1, 0.6), "Co": (0.1, 0.6), "Ni": (0.0, 0.2)}
    ds = DesignSpace(Space(composition={"elements": elements}))
    for cls in STRATEGIES:
        batch = cls(ds, seed=0).propose([], 32, [])
        assert len(batch) == 32 and all(c.pool_index is None for c in batch)
        _check_composition([c.inputs for c in batch], elements)


# --- load_pool -------------------------------------------------------------------------------------------


def test_load_pool_averages_duplicates():
    raw = pd.read_csv(DATA / "Perovskite.csv")
    pool = load_pool(DATA / "Perovskite.csv", PEROV_INPUTS, [PEROV_OUTPUT])
    distinct = raw[PEROV_INPUTS].drop_duplicates()
    assert len(raw) > len(distinct)  # the file really has repeats
    assert len(pool) == len(distinct)
    assert list(pool.columns) == [*PEROV_INPUTS, PEROV_OUTPUT]
    assert not pool[PEROV_INPUTS].duplicated().any()
    # first-appearance order
    assert pool[PEROV_INPUTS].to_numpy().tolist() == distinct.to_numpy().tolist()
    # one averaged value by hand: the first row's inputs
    first = raw.loc[0, PEROV_INPUTS]
    same = raw[(raw[PEROV_INPUTS] == first).all(axis=1)]
    assert len(same) >= 2
    expected = same[PEROV_OUTPUT].sum() / len(same)
    assert pool.loc[0, PEROV_OUTPUT] == pytest.approx(expected, rel=1e-12)
    assert pool.loc[0, PEROV_OUTPUT] not in set(raw[PEROV_OUTPUT])  # really an average, not a pick


def test_load_pool_every_average(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeffa,b,y,z\n1,2,10,0\n3,4,5,1\n1,2,20,2\n1,2,30,3\n3,4,7,4\n5,6,1,5\n")
    pool = load_pool(path, ["a", "b"], ["y"])
    assert pool.to_dict("list") == {"a": [1, 3, 5], "b": [2, 4, 6], "y": [20.0, 6.0, 1.0]}


def test_load_pool_missing_column():
    with pytest.raises(AthanorError, match="'nope'"):
        load_pool(DATA / "P3HT.csv", P3HT_INPUTS, ["nope"])


# --- the replay world ---------------------------------------------------------------------------------------


def _world(noise=0.0, failure_rate=0.0, seed=0):
    return ReplayWorld(DATA / "P3HT.csv", P3HT_INPUTS, [P3HT_OUTPUT],
                       SimulatedConditions(seed=seed, noise=noise, failure_rate=failure_rate))


def _recipe(world, index):
    return {"pool_index": index, "inputs": {k: float(world.pool.loc[index, k]) for k in P3HT_INPUTS}}


def test_replay_synthesize_and_measure_exact():
    world = _world()
    for index in (0, 5, len(world.pool) - 1):
        product = world.synthesize(_recipe(world, index), key=f"s{index}:synthesize")
        assert product == {"pool_index": index}
        values = world.measure(product, "conductivity", key=f"s{index}:characterize")
        assert values == {P3HT_OUTPUT: float(world.pool.loc[index, P3HT_OUTPUT])}


def test_replay_measure_matches_dataset_average():
    world = _world()
    raw = pd.read_csv(DATA / "P3HT.csv")
    row = world.pool.loc[7, P3HT_INPUTS]
    same = raw[(raw[P3HT_INPUTS] == row).all(axis=1)]
    assert world.measure({"pool_index": 7}, "p", "k")[P3HT_OUTPUT] == pytest.approx(same[P3HT_OUTPUT].mean())


def test_replay_mismatched_recipe_raises():
    world = _world()
    recipe = _recipe(world, 3)
    recipe["inputs"][P3HT_INPUTS[0]] += 1.0
    with pytest.raises(AthanorError, match="do not match pool row 3"):
        world.synthesize(recipe, "k")
    with pytest.raises(AthanorError, match="no row"):
        world.synthesize({"pool_index": len(world.pool), "inputs": {}}, "k")
    with pytest.raises(AthanorError, match="no row"):
        world.synthesize({"pool_index": -1, "inputs": {}}, "k")
    with pytest.raises(AthanorError, match="no row"):
        world.synthesize({"inputs": _recipe(world, 3)["inputs"]}, "k")
    # the right inputs under another row's index
    wrong = _recipe(world, 4)
    wrong["pool_index"] = 3
    if not np.allclose(world.pool.loc[3, P3HT_INPUTS].to_numpy(float), world.pool.loc[4, P3HT_INPUTS].to_numpy(float)):
        with pytest.raises(AthanorError):
            world.synthesize(wrong, "k")


def test_replay_noise_is_keyed():
    world = _world(noise=0.1)
    exact = float(world.pool.loc[2, P3HT_OUTPUT])
    a = world.measure({"pool_index": 2}, "p", "S0001:characterize")
    b = world.measure({"pool_index": 2}, "p", "S0001:characterize")
    assert a == b
    assert a[P3HT_OUTPUT] != exact
    others = {world.measure({"pool_index": 2}, "p", f"S{i:04d}:characterize")[P3HT_OUTPUT] for i in range(2, 42)}
    assert len(others) == 40
    rel = (np.array(sorted(others)) - exact) / exact
    assert 0.02 < rel.std() < 0.3  # about the 10 % relative noise asked for
    other_seed = _world(noise=0.1, seed=1).measure({"pool_index": 2}, "p", "S0001:characterize")
    assert other_seed != a


def test_replay_failure_rate_deterministic_per_key():
    world = _world(failure_rate=0.3)
    twin = _world(failure_rate=0.3)

    def outcome(w, key):
        try:
            w.measure({"pool_index": 0}, "p", key)
            return "ok"
        except InstrumentFault as exc:
            assert key in str(exc)
            return "fault"

    keys = [f"S{i:04d}:characterize" for i in range(300)]
    first = [outcome(world, k) for k in keys]
    assert first == [outcome(world, k) for k in keys]
    assert first == [outcome(twin, k) for k in keys]
    n_fault = first.count("fault")
    assert 50 < n_fault < 130  # about 30 % of 300
    assert isinstance(InstrumentFault("x"), RuntimeError)
    # synthesis faults too, keyed the same way
    key = keys[first.index("fault")]
    with pytest.raises(InstrumentFault):
        world.synthesize(_recipe(world, 0), key)
    assert world.synthesize(_recipe(world, 0), keys[first.index("ok")]) == {"pool_index": 0}


def test_no_faults_without_failure_rate():
    world = _world(failure_rate=0.0)
    for i in range(100):
        world.measure({"pool_index": 1}, "p", f"k{i}")


def test_replay_from_campaign():
    from athanor.spec import load_campaign

    spec = load_campaign(ROOT / "configs" / "perovskite_replay.yaml")
    world = ReplayWorld.from_campaign(spec)
    assert world.outputs == [PEROV_OUTPUT] and world.inputs == PEROV_INPUTS
    assert len(world.pool) == len(pd.read_csv(DATA / "Perovskite.csv")[PEROV_INPUTS].drop_duplicates())
    assert world.conditions.seed == spec.seed and world.conditions.noise == spec.world.noise
