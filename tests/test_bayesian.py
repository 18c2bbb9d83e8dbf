"""The BoTorch designer on every kind of input space, objective and failure mode."""

from __future__ import annotations

import numpy as np
import pytest
from botorch.exceptions import ModelFittingError

from athanor.planners import bayesian, surrogates
from athanor.planners.base import Observation
from athanor.planners.bayesian import BayesianStrategy
from athanor.planners.optim import project_to_simplex
from athanor.planners.space import DesignSpace
from athanor.planners.surrogates import Recipe
from athanor.simulators.replay import load_pool
from athanor.spec import parse_campaign
from conftest import DATA, P3HT_INPUTS, P3HT_OBJECTIVE

FAST = dict(mc_samples=32, raw_samples=64, num_restarts=4, steps=20)


def campaign(space_yaml: str, objectives_yaml: str = "[{name: y, direction: maximize}]", extra: str = ""):
    return parse_campaign(f"campaign: t\nspace:\n{space_yaml}\nobjectives: {objectives_yaml}\n"
                          f"budget: {{experiments: 10}}\n{extra}")


def observe(space: DesignSpace, n: int, f, seed: int = 0) -> list[Observation]:
    points = space.from_unit(np.random.default_rng(seed).random((n, space.dim)))
    return [Observation(inputs=p, values=f(p)) for p in points]


def test_continuous_space_climbs_towards_the_optimum():
    spec = campaign("  parameters:\n    - {type: continuous, name: a, low: -2, high: 2}\n"
                    "    - {type: continuous, name: b, low: 0, high: 10}")
    space = DesignSpace(spec.space)
    f = lambda p: {"y": -(p["a"] - 1.0) ** 2 - 0.1 * (p["b"] - 7) ** 2}  # noqa: E731
    history = observe(space, 12, f)
    for _ in range(6):
        history += [Observation(inputs=c.inputs, values=f(c.inputs))
                    for c in BayesianStrategy(space, spec.objectives, **FAST).propose(history, 2, [])]
    best = max(history, key=lambda o: o.values["y"])
    assert best.values["y"] > -0.3
    assert all(-2 <= o.inputs["a"] <= 2 and 0 <= o.inputs["b"] <= 10 for o in history)


def test_mixed_integer_and_categorical_inputs():
    spec = campaign("  parameters:\n    - {type: integer, name: n, low: 1, high: 5}\n"
                    "    - {type: categorical, name: solvent, choices: [water, ethanol, dmf]}\n"
                    "    - {type: continuous, name: t, low: 0, high: 1}")
    space = DesignSpace(spec.space)
    assert space.cat_dims == [1]
    f = lambda p: {"y": p["n"] + (3.0 if p["solvent"] == "dmf" else 0.0) - (p["t"] - 0.5) ** 2}  # noqa: E731
    proposals = BayesianStrategy(space, spec.objectives, **FAST).propose(observe(space, 10, f), 3, [])
    assert len(proposals) == 3
    for c in proposals:
        assert isinstance(c.inputs["n"], int) and 1 <= c.inputs["n"] <= 5
        assert c.inputs["solvent"] in ("water", "ethanol", "dmf")
        assert 0 <= c.inputs["t"] <= 1


@pytest.mark.parametrize("bounds", [
    {"Fe": (0, 1), "Co": (0, 1), "Ni": (0, 1)},
    {"Fe": (0.5, 0.9), "Co": (0.05, 0.3), "Ni": (0.0, 0.1), "Cu": (0.0, 0.2)},
    {"Fe": (0.1, 0.2), "Co": (0.1, 0.2), "Ni": (0.6, 0.8)},
])
def test_composition_proposals_sum_to_one_within_bounds(bounds):
    elements = ", ".join(f"{k}: [{lo}, {hi}]" for k, (lo, hi) in bounds.items())
    spec = campaign(f"  composition:\n    elements: {{{elements}}}")
    space = DesignSpace(spec.space)
    f = lambda p: {"y": p["Fe"] - (p["Co"] - 0.2) ** 2}  # noqa: E731
    history = observe(space, 15, f)
    proposals = BayesianStrategy(space, spec.objectives, **FAST).propose(history, 4, history[:2])
    assert len(proposals) == 4
    for c in proposals:
        assert abs(sum(c.inputs[e] for e in bounds) - 1.0) <= 1e-9
        assert all(lo - 1e-12 <= c.inputs[e] <= hi + 1e-12 for e, (lo, hi) in bounds.items())


def test_simplex_projection_is_exact_and_idempotent():
    torch = pytest.importorskip("torch")
    low = torch.tensor([0.0, 0.1, 0.0, 0.2], dtype=torch.double)
    high = torch.tensor([0.5, 0.6, 0.3, 0.9], dtype=torch.double)
    y = torch.randn(200, 4, dtype=torch.double, generator=torch.Generator().manual_seed(1)) * 3
    x = project_to_simplex(y, low, high)
    assert torch.all((x.sum(-1) - 1).abs() < 1e-12)
    assert torch.all(x >= low - 1e-15) and torch.all(x <= high + 1e-15)
    assert torch.allclose(project_to_simplex(x, low, high), x, atol=1e-12)


def _pool_space():
    pool = load_pool(DATA / "P3HT.csv", P3HT_INPUTS, [P3HT_OBJECTIVE])
    spec = campaign(f"  pool: {{dataset: {DATA / 'P3HT.csv'}, inputs: {P3HT_INPUTS}}}",
                    f"[{{name: '{P3HT_OBJECTIVE}', direction: maximize}}]")
    return spec, DesignSpace(spec.space, pool[P3HT_INPUTS].to_numpy(float)), pool


def test_pool_mode_scores_free_rows_and_never_repeats():
    spec, space, pool = _pool_space()
    strategy = BayesianStrategy(space, spec.objectives, seed=1, **FAST)
    history = [Observation(inputs=space.pool_inputs(i), pool_index=i,
                           values={P3HT_OBJECTIVE: float(pool[P3HT_OBJECTIVE][i])}) for i in range(0, 40, 2)]
    pending = [Observation(inputs=space.pool_inputs(i), pool_index=i) for i in (1, 3, 5)]
    seen = {o.pool_index for o in history + pending}
    for _ in range(3):
        batch = strategy.propose(history, 4, pending)
        rows = [c.pool_index for c in batch]
        assert len(set(rows)) == 4 and not set(rows) & seen
        assert all(c.inputs == space.pool_inputs(c.pool_index) for c in batch)
        seen |= set(rows)
        pending += [Observation(inputs=c.inputs, pool_index=c.pool_index) for c in batch]
    again = BayesianStrategy(space, spec.objectives, seed=1, **FAST).propose(history, 4, pending[:3])
    first = BayesianStrategy(space, spec.objectives, seed=1, **FAST).propose(history, 4, pending[:3])
    assert [c.pool_index for c in again] == [c.pool_index for c in first]  # deterministic


def test_every_proposal_explains_itself():
    spec, space, pool = _pool_space()
    history = [Observation(inputs=space.pool_inputs(i), pool_index=i,
                           values={P3HT_OBJECTIVE: float(pool[P3HT_OBJECTIVE][i])}) for i in range(10)]
    for c in BayesianStrategy(space, spec.objectives, **FAST).propose(history, 2, []):
        assert c.acquisition_value is not None
        prediction = c.predicted[P3HT_OBJECTIVE]
        assert prediction.sd > 0 and np.isfinite(prediction.mean)
        assert "qLogNEI" in c.rationale and "±" in c.rationale


def test_objective_counts_pick_their_acquisition():
    spec_box = "  parameters:\n    - {type: continuous, name: a, low: 0, high: 1}\n    - {type: continuous, name: b, low: 0, high: 1}"
    names = ["y1", "y2", "y3", "y4"]
    for k, label in [(2, "qLogNEHVI"), (3, "qLogNEHVI"), (4, "qLogNParEGO")]:
        objectives = "[" + ", ".join(f"{{name: {n}, direction: maximize}}" for n in names[:k]) + "]"
        spec = campaign(spec_box, objectives)
        space = DesignSpace(spec.space)
        f = lambda p, k=k: {n: np.sin(3 * p["a"] + i) + p["b"] * i for i, n in enumerate(names[:k])}  # noqa: E731
        proposals = BayesianStrategy(space, spec.objectives, **FAST).propose(observe(space, 10, f), 2, [])
        assert len(proposals) == 2 and all(label in c.rationale for c in proposals)
        assert set(proposals[0].predicted) == set(names[:k])


def test_target_objective_is_predicted_in_measured_units():
    spec = campaign("  parameters:\n    - {type: continuous, name: a, low: 0, high: 1}",
                    "[{name: lattice, direction: target, target: 3.95, tolerance: 0.03}]")
    space = DesignSpace(spec.space)
    f = lambda p: {"lattice": 3.5 + p["a"]}  # noqa: E731  -- the target sits at a = 0.45
    history = observe(space, 8, f)
    for _ in range(4):
        history += [Observation(inputs=c.inputs, values=f(c.inputs))
                    for c in BayesianStrategy(space, spec.objectives, **FAST).propose(history, 1, [])]
    last = history[-1]
    assert abs(last.values["lattice"] - 3.95) < 0.1
    assert 3.5 <= BayesianStrategy(space, spec.objectives, **FAST).propose(history, 1, [])[0].predicted["lattice"].mean <= 4.5


def test_outcome_constraint_is_modelled_as_feasibility():
    space_yaml = "  parameters:\n    - {type: continuous, name: a, low: 0, high: 1}\n    - {type: continuous, name: b, low: 0, high: 1}"
    f = lambda p: {"y": p["a"] + 0.1 * p["b"], "cost": p["a"]}  # noqa: E731
    free = campaign(space_yaml)
    bound = campaign(space_yaml, extra="outcome_constraints: [{name: cost, upper: 0.3}]")
    history = observe(DesignSpace(free.space), 15, f)
    unconstrained = BayesianStrategy(DesignSpace(free.space), free.objectives, **FAST).propose(history, 1, [])[0]
    constrained = BayesianStrategy(DesignSpace(bound.space), bound.objectives,
                                   constraints=bound.outcome_constraints, **FAST).propose(history, 1, [])[0]
    assert unconstrained.inputs["a"] > 0.8
    assert constrained.inputs["a"] < 0.45


def test_failure_modes_fall_back_without_crashing(monkeypatch):
    spec = campaign("  parameters:\n    - {type: continuous, name: a, low: 0, high: 1}")
    space = DesignSpace(spec.space)
    strategy = BayesianStrategy(space, spec.objectives, **FAST)
    # Too little data: the initial design.
    assert "initial design" in strategy.propose([Observation(inputs={"a": 0.5}, values={"y": 1.0})], 2, [])[0].rationale
    # Constant objective.
    flat = [Observation(inputs={"a": a}, values={"y": 2.0}) for a in (0.1, 0.5, 0.9)]
    assert "constant" in strategy.propose(flat, 1, [])[0].rationale
    # Duplicates, near-duplicates and failed samples.
    messy = [Observation(inputs={"a": 0.3}, values={"y": 1.0}), Observation(inputs={"a": 0.3}, values={"y": 1.2}),
             Observation(inputs={"a": 0.3 + 1e-14}, values={"y": 1.1}), Observation(inputs={"a": 0.8}, values={"y": 0.2}),
             Observation(inputs={"a": 0.6}, failed=True)]
    proposal = strategy.propose(messy, 2, [])
    assert len(proposal) == 2 and all(0 <= c.inputs["a"] <= 1 for c in proposal)
    # A fit that fails.
    for module in (bayesian, surrogates):
        monkeypatch.setattr(module, "fit_gpytorch_mll", lambda *a, **k: (_ for _ in ()).throw(ModelFittingError("boom")))
    data = [Observation(inputs={"a": a}, values={"y": a * a}) for a in (0.1, 0.4, 0.9)]
    assert "model fit failed" in strategy.propose(data, 1, [])[0].rationale


def test_rounded_integer_proposals_are_distinct_and_new():
    spec = campaign("  parameters:\n    - {type: integer, name: i, low: 1, high: 6}\n"
                    "    - {type: integer, name: j, low: 1, high: 6}")
    space = DesignSpace(spec.space)
    f = lambda p: {"y": -abs(p["i"] - 4) - abs(p["j"] - 2)}  # noqa: E731
    history = observe(space, 6, f)
    proposals = BayesianStrategy(space, spec.objectives, **FAST).propose(history, 4, [])
    keys = [(c.inputs["i"], c.inputs["j"]) for c in proposals]
    assert len(keys) == 4 and len(set(keys)) == 4
    assert not set(keys) & {(o.inputs["i"], o.inputs["j"]) for o in history}


def test_target_outputs_are_standardized_but_not_warped():
    Y = np.random.default_rng(0).lognormal(size=(30, 2))
    warp = bayesian.OutputWarp(Y, keep=[0])
    Z = warp.forward(Y)
    assert np.allclose(Z[:, 0], (Y[:, 0] - Y[:, 0].mean()) / Y[:, 0].std())  # distances keep their units
    assert abs(np.mean(Z[:, 1] ** 3)) < abs(np.mean(((Y[:, 1] - Y[:, 1].mean()) / Y[:, 1].std()) ** 3))  # less skewed
    assert np.allclose(warp.backward(Z), Y)


def test_plug_in_log_ei_is_available_and_unknown_acquisitions_refused():
    spec, space, pool = _pool_space()
    history = [Observation(inputs=space.pool_inputs(i), pool_index=i,
                           values={P3HT_OBJECTIVE: float(pool[P3HT_OBJECTIVE][i])}) for i in range(8)]
    picks = BayesianStrategy(space, spec.objectives, acquisition="qLogEI", **FAST).propose(history, 2, [])
    assert all("qLogEI" in c.rationale and c.acquisition_value is not None for c in picks)
    with pytest.raises(ValueError, match="qLogNEI or qLogEI"):
        BayesianStrategy(space, spec.objectives, acquisition="UCB")


def test_blend_fractions_are_warped_in_pool_mode_and_process_columns_are_not():
    from botorch.models.transforms.input import Warp

    spec, space, pool = _pool_space()  # P3HT: five blend percentages summing to 100 in every row
    assert space.fraction_dims == list(range(5))
    shifted = DesignSpace(spec.space, space.pool * np.linspace(1.0, 1.5, len(space.pool))[:, None])
    assert shifted.fraction_dims == []  # row sums differ: not a composition
    history = [Observation(inputs=space.pool_inputs(i), pool_index=i,
                           values={P3HT_OBJECTIVE: float(pool[P3HT_OBJECTIVE][i])}) for i in range(0, 30, 3)]
    strategy = BayesianStrategy(space, spec.objectives, seed=1, **FAST)
    X, Y = strategy._training_data(history)
    model = strategy._fit(X, Y, Recipe("matern", False, True))
    assert isinstance(model.input_transform, Warp) and model.input_transform.indices.tolist() == list(range(5))
    assert getattr(strategy._fit(X, Y, Recipe("matern", False, False)), "input_transform", None) is None
    assert any(r.warp_inputs for r in strategy.portfolio)  # on a blend pool, warping is a choice
    plain = BayesianStrategy(space, spec.objectives, seed=1, warp_inputs=False, **FAST)
    assert not any(r.warp_inputs for r in plain.portfolio)
    process = BayesianStrategy(shifted, spec.objectives, seed=1, warp_inputs=True, **FAST)
    assert not any(r.warp_inputs for r in process.portfolio)  # nothing to warp where there are no fractions
    picks = strategy.propose(history, 2, [])
    assert len(picks) == 2 and all(p.pool_index is not None for p in picks)
