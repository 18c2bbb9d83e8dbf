"""The surrogate portfolio: closed-form leave-one-out against brute force, the warp's Jacobian against
finite differences, checkpoints, and a choice that a rebuilt designer repeats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from athanor.planners.base import Observation
from athanor.planners.bayesian import BayesianStrategy, OutputWarp
from athanor.planners.space import DesignSpace
from athanor.planners.surrogates import Recipe, checkpoint, fit_gp, loo_log_density
from athanor.simulators.replay import load_pool
from athanor.spec import parse_campaign
from conftest import DATA, P3HT_INPUTS, P3HT_OBJECTIVE


def _data(n: int = 14, d: int = 2, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    y = np.sin(5 * X[:, 0]) + X[:, 1] ** 2 + 0.05 * rng.standard_normal(n)
    return torch.as_tensor(X), torch.as_tensor(y[:, None])


@pytest.mark.parametrize("kernel", ["matern", "rbf"])
def test_closed_form_loo_matches_conditioning_on_the_other_points(kernel: str) -> None:
    """For each i: the Gaussian conditional of y_i on the other n-1 points, with the fitted
    hyperparameters, evaluated at y_i; the closed form must give the same density."""
    torch.manual_seed(0)
    X, y = _data()
    model = fit_gp(X, 3.0 * y + 7.0, kernel)
    closed = loo_log_density(model)
    model.train()
    with torch.no_grad():
        prior = model.likelihood(model(*model.train_inputs))
        K, m, z = prior.covariance_matrix.numpy(), prior.mean.numpy(), model.train_targets.numpy()
    model.eval()
    scale = float(model.outcome_transform.stdvs.squeeze())
    for i in range(len(z)):
        rest = np.delete(np.arange(len(z)), i)
        k = K[rest, i]
        weights = np.linalg.solve(K[np.ix_(rest, rest)], k)
        mu = m[i] + weights @ (z[rest] - m[rest])
        var = K[i, i] - k @ weights
        brute = -0.5 * ((z[i] - mu) ** 2 / var + math.log(2 * math.pi * var)) - math.log(scale)
        assert closed[i] == pytest.approx(brute, rel=1e-6, abs=1e-8)


def test_warp_jacobian_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    Y = np.concatenate([rng.lognormal(0.0, 1.5, 30), -rng.lognormal(0.0, 0.5, 10)])[:, None]
    warp = OutputWarp(Y)
    for y in (-3.0, -0.2, 0.0, 0.4, 5.0, 60.0):
        h = 1e-6 * max(1.0, abs(y))
        slope = (warp.forward(np.array([[y + h]])) - warp.forward(np.array([[y - h]])))[0, 0] / (2 * h)
        assert warp.log_jacobian(np.array([y]), 0)[0] == pytest.approx(math.log(abs(slope)), abs=1e-5)
    plain = OutputWarp(Y, enabled=False)
    assert np.array_equal(plain.log_jacobian(Y[:, 0], 0), np.zeros(len(Y)))


def test_checkpoints_are_geometric_and_depend_only_on_n() -> None:
    points = sorted({checkpoint(n, 8) for n in range(8, 61)})
    assert points == [8, 10, 13, 17, 22, 28, 35, 44, 55]
    assert checkpoint(9, 8) == 8 and checkpoint(44, 8) == 44 and checkpoint(43, 8) == 35


def _p3ht() -> tuple[DesignSpace, list, np.ndarray]:
    pool = load_pool(DATA / "P3HT.csv", P3HT_INPUTS, [P3HT_OBJECTIVE])
    spec = parse_campaign(
        "campaign: t\nspace:\n  pool: {dataset: " + str(DATA / "P3HT.csv") + f", inputs: {P3HT_INPUTS}}}\n"
        f"objectives: [{{name: '{P3HT_OBJECTIVE}', direction: maximize}}]\nbudget: {{experiments: 10}}\n")
    return DesignSpace(spec.space, pool[P3HT_INPUTS].to_numpy(float)), spec.objectives, pool[P3HT_OBJECTIVE].to_numpy()


def test_portfolio_choice_is_the_best_loo_density_and_a_rebuilt_designer_repeats_it() -> None:
    space, objectives, y = _p3ht()
    fast = dict(mc_samples=32, seed=2, kernel="auto", warp_outputs="auto")  # the whole portfolio open
    history = [Observation(inputs=space.pool_inputs(i), pool_index=i, values={objectives[0].name: float(y[i])})
                for i in range(0, 60, 5)]  # 12 measured: the checkpoint at 10 decides
    running = BayesianStrategy(space, objectives, **fast)
    for k in (8, 10, 11):  # a designer that has seen the campaign grow past its checkpoints
        running.propose(history[:k], 1, [])
    grown = running.propose(history, 1, [])
    rebuilt = BayesianStrategy(space, objectives, **fast).propose(history, 1, [])  # after a crash
    assert grown[0].pool_index == rebuilt[0].pool_index
    assert "at 10 measured" in grown[0].rationale and running.model_version.endswith("-12")

    # The recipe named is the one with the highest leave-one-out density, computed independently here.
    X, Y = running._training_data(history[:10])
    scores = {}
    for recipe in running.portfolio:
        warp = OutputWarp(Y.numpy(), enabled=recipe.warp_outputs)
        torch.manual_seed(0)
        model = fit_gp(X, torch.as_tensor(warp.forward(Y.numpy())), recipe.kernel,
                       space.fraction_dims if recipe.warp_inputs else [])
        scores[recipe.name] = loo_log_density(model).sum() + warp.log_jacobian(Y[:, 0].numpy(), 0).sum()
    plain = max((n for n in scores if "inwarp" not in n), key=scores.get)
    best = max((plain, plain + "+inwarp"), key=scores.get)  # input warping is tried on the best plain one
    default = running.early.name
    expected = best if scores[best] - scores[default] >= running.margin else default  # strong evidence only
    assert running.model_version.removeprefix("gp-").removesuffix("-12") == expected
    assert {r.name for r in running.portfolio} == {
        f"{k}{o}{i}" for k in ("matern", "rbf") for o in ("", "+outwarp") for i in ("", "+inwarp")}


def test_the_default_recipe_is_left_only_on_strong_evidence() -> None:
    """With an infinite margin the designer never leaves its default; with none it takes the best."""
    space, objectives, y = _p3ht()
    history = [Observation(inputs=space.pool_inputs(i), pool_index=i, values={objectives[0].name: float(y[i])})
               for i in range(0, 40, 5)]  # 8 measured: the first checkpoint
    open_ = dict(mc_samples=32, warp_inputs=False, kernel="auto", warp_outputs="auto")
    stubborn = BayesianStrategy(space, objectives, margin=float("inf"), **open_)
    stubborn.propose(history, 1, [])
    assert stubborn.model_version == f"gp-{stubborn.early.name}-8"
    eager = BayesianStrategy(space, objectives, margin=0.0, **open_)
    eager.propose(history, 1, [])
    X, Y = eager._training_data(history)
    scores = {}
    for recipe in eager.portfolio:
        warp = OutputWarp(Y.numpy(), enabled=recipe.warp_outputs)
        model = fit_gp(X, torch.as_tensor(warp.forward(Y.numpy())), recipe.kernel)
        scores[recipe.name] = loo_log_density(model).sum() + warp.log_jacobian(Y[:, 0].numpy(), 0).sum()
    assert eager.model_version == f"gp-{max(scores, key=scores.get)}-8"


def test_fixed_options_shrink_the_portfolio_and_bad_ones_are_refused() -> None:
    space, objectives, _ = _p3ht()
    fixed = BayesianStrategy(space, objectives, kernel="rbf", warp_outputs=False, warp_inputs=False)
    assert fixed.portfolio == [Recipe("rbf", False, False)]
    assert len(BayesianStrategy(space, objectives, kernel="matern", warp_outputs="auto").portfolio) == 4
    default = BayesianStrategy(space, objectives)  # on a blend pool only input warping is left open
    assert default.portfolio == [Recipe("matern", True, False), Recipe("matern", True, True)]
    assert default.early == Recipe("matern", True, False)
    with pytest.raises(ValueError, match="kernel must be auto or one of matern, rbf"):
        BayesianStrategy(space, objectives, kernel="linear")
    with pytest.raises(ValueError, match="warp_outputs must be auto, true or false"):
        BayesianStrategy(space, objectives, warp_outputs="sometimes")
    with pytest.raises(ValueError, match="warp_inputs must be auto, true or false"):
        BayesianStrategy(space, objectives, warp_inputs="yes please")
    with pytest.raises(ValueError, match=r"early must be one of the recipes the options leave open \(rbf"):
        BayesianStrategy(space, objectives, kernel="rbf", early="matern+outwarp")
    assert BayesianStrategy(space, objectives, warp_outputs=False).early == Recipe("matern", False, False)
