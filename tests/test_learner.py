"""The learner without Ray: surrogate cross-validation metrics, model versions, refits and stopping."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from athanor.agents import surrogates
from athanor.agents.learner import LearnerAgent
from athanor.agents.surrogates import LearnerOptions, stall
from athanor.messages import ModelUpdate, parse_message
from athanor.spec import Objective

CONTINUOUS = {"parameters": [{"type": "continuous", "name": "a", "low": 0.0, "high": 2.0},
                             {"type": "continuous", "name": "b", "low": -1.0, "high": 1.0}]}
COMPOSITION = {"composition": {"elements": {"Fe": [0.0, 1.0], "Ni": [0.0, 1.0], "Co": [0.0, 1.0]}}}


def campaign(space=CONTINUOUS, objectives=None, constraints=(), batch_size=5, budget=100, seed=7):
    return {"campaign": "learn", "seed": seed, "space": space,
            "objectives": objectives or [{"name": "y", "direction": "maximize"}],
            "outcome_constraints": list(constraints), "budget": {"experiments": budget}, "batch_size": batch_size,
            "learner": {"surrogates": ["gp", "ensemble"]}}  # a Sobol designer alone would get none


def sample(i, inputs, values, batch_size=5, state="characterized"):
    return {"id": f"s{i}", "seq": i + 1, "batch": i // batch_size, "state": state, "inputs": inputs, "values": values}


def smooth(n, seed=0, noise=0.03, batch_size=5):
    """A smooth 2-D function of two continuous parameters, measured with a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b = rng.uniform(0, 2), rng.uniform(-1, 1)
        y = math.sin(1.5 * a) + math.cos(2.5 * b) + 0.3 * a * b + noise * rng.normal()
        out.append(sample(i, {"a": a, "b": b}, {"y": y}, batch_size))
    return out


def alloy(n, seed=0, noise=0.03):
    """A smooth property of a ternary composition (a 2-D simplex), with a second, constrained output."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        fe, ni, co = rng.dirichlet([1.0, 1.0, 1.0])
        y = 2 * fe * ni + math.sin(3 * co) + noise * rng.normal()
        z = fe - co + noise * rng.normal()
        out.append(sample(i, {"Fe": fe, "Ni": ni, "Co": co}, {"y": y, "z": z}))
    return out


def update(agent, samples):
    wire = agent.update(samples[-1]["id"], None, {"start": 0, "records": samples})
    message = parse_message(wire)  # the wire form validates: every metric finite
    assert isinstance(message, ModelUpdate)
    assert all(math.isfinite(v) for v in message.metrics.values())
    return message


def only(agent, *models, **options):
    agent.options = dataclasses.replace(agent.options, surrogates=tuple(models), **options)
    return agent


# --- metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("space, make, outputs", [
    (CONTINUOUS, smooth, ["y"]),
    (COMPOSITION, alloy, ["y", "z"]),
], ids=["continuous", "composition"])
def test_both_surrogates_cross_validate_well_on_a_smooth_function(space, make, outputs):
    constraints = [{"name": "z", "upper": 0.5}] if "z" in outputs else []
    agent = LearnerAgent(campaign(space, constraints=constraints), "c1")
    data = make(30)
    message = update(agent, data)
    m = message.metrics
    assert message.n_train == 30 and m["n_train"] == 30 and m["cv_folds"] == 5
    assert message.model_version.startswith("gp+ens-30-")
    for output in outputs:
        spread = float(np.std([s["values"][output] for s in data]))
        for model in ("gp", "ensemble"):
            key = f"{model}:{output}"
            assert m[f"cv_rmse:{key}"] < 0.5 * spread, key
            assert m[f"cv_r2:{key}"] > 0.75, key
            if output == "y":  # the constrained output's GP is overconfident on the simplex (about 0.4)
                assert 0.4 <= m[f"coverage68:{key}"] <= 0.95, key
            assert m[f"coverage68:{key}"] <= m[f"coverage95:{key}"] <= 1.0, key
            assert f"cv_nll:{key}" in m
        assert m[f"sd_scale:ensemble:{output}"] > 0
    assert "failed" not in message.reason
    # the fitted surrogates answer in measured units, with an sd
    mean, sd = agent.predict([data[0]["inputs"]], "gp")
    assert mean.shape == sd.shape == (1, len(outputs)) and (sd > 0).all()
    assert abs(mean[0, 0] - data[0]["values"]["y"]) < 0.4 * float(np.std([s["values"]["y"] for s in data]))


def test_scores_are_what_they_say():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    perfect = surrogates.scores(y, y, np.full(4, 0.5), float(y.std()))
    assert perfect["cv_rmse"] == 0 and perfect["cv_r2"] == 1 and perfect["coverage68"] == 1
    off = surrogates.scores(y, y + np.array([0.2, 0.2, 2.0, 2.0]), np.ones(4), float(y.std()))
    assert off["coverage68"] == 0.5 and off["coverage95"] == 0.5
    assert math.isclose(off["cv_rmse"], math.sqrt((0.04 * 2 + 4 * 2) / 4))
    zero_sd = surrogates.scores(y, y + 1, np.zeros(4), float(y.std()))  # no inf, no NaN
    assert all(math.isfinite(v) for v in zero_sd.values())


def test_too_few_points_give_a_summary_only():
    agent = LearnerAgent(campaign(), "c1")
    message = update(agent, smooth(3))
    assert message.model_version == "summary-3" and message.n_train == 3
    assert not any(k.startswith("cv_") for k in message.metrics)
    assert message.metrics["n_measured"] == 3 and "best:y" in message.metrics


def test_a_constant_objective_does_not_crash():
    data = [sample(i, s["inputs"], {"y": 1.5}) for i, s in enumerate(smooth(10))]
    message = update(LearnerAgent(campaign(), "c1"), data)
    assert "constant" in message.reason and not message.recommend_stop
    assert not any(k.startswith(("cv_rmse", "cv_r2", "coverage")) for k in message.metrics)
    assert message.metrics["best:y"] == 1.5


def test_a_failing_model_is_left_out_with_a_note(monkeypatch):
    def broken(self, X, Y):
        raise RuntimeError("singular everything")

    monkeypatch.setattr(surrogates.EnsembleSurrogate, "fit", broken)
    message = update(LearnerAgent(campaign(), "c1"), smooth(12))
    assert "ensemble failed (RuntimeError: singular everything)" in message.reason
    assert "cv_rmse:gp:y" in message.metrics and not any(":ensemble:" in k for k in message.metrics)


def test_any_modelling_error_still_answers(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("bad data")

    monkeypatch.setattr("athanor.agents.learner.cross_validate", broken)
    message = update(LearnerAgent(campaign(), "c1"), smooth(12))
    assert message.model_version == "summary-12" and "modelling failed" in message.reason
    assert message.metrics["n_measured"] == 12


# --- versions and refits -------------------------------------------------------------------------


def test_model_version_is_stable_for_the_same_data_and_changes_with_it():
    data = smooth(12)
    first = update(only(LearnerAgent(campaign(), "c1"), "gp"), data)
    agent = only(LearnerAgent(campaign(), "c2"), "gp")
    again = update(agent, data)
    assert first.model_version == again.model_version == update(agent, data).model_version
    assert first.metrics == again.metrics
    changed = [*data[:-1], {**data[-1], "values": {"y": data[-1]["values"]["y"] + 0.5}}]
    other = update(only(LearnerAgent(campaign(), "c3"), "gp"), changed)
    assert other.model_version != first.model_version
    assert other.model_version.startswith("gp-12-")


def test_refits_every_k_measurements_not_on_every_sample(monkeypatch):
    calls = []
    real = surrogates.cross_validate

    def counting(X, *args, **kwargs):
        calls.append(len(X))
        return real(X, *args, **kwargs)

    monkeypatch.setattr("athanor.agents.learner.cross_validate", counting)
    agent = only(LearnerAgent(campaign(batch_size=5), "c1"), "gp", refit_every=8)
    data = smooth(20)
    messages = [update(agent, data[:n]) for n in range(1, 21)]
    # first fit at 4 points; then every 8 new measurements (12, 20); in between, the last model
    assert calls == [4, 12, 20]
    at = {n: messages[n - 1] for n in range(1, 21)}
    assert {at[n].model_version for n in range(4, 12)} == {at[4].model_version}
    assert at[12].model_version != at[4].model_version
    assert at[13].n_train == 12 and at[13].metrics["n_measured"] == 13
    model = lambda m: {k: v for k, v in m.metrics.items() if ":gp:" in k}  # noqa: E731
    assert model(at[13]) == model(at[12]) != model(at[20])
    assert at[13].metrics["best:y"] == max(s["values"]["y"] for s in data[:13])  # the best is always current


def test_refits_every_k_measurements_when_batches_never_complete(monkeypatch):
    calls = []
    real = surrogates.cross_validate
    monkeypatch.setattr("athanor.agents.learner.cross_validate",
                        lambda X, *a, **k: calls.append(len(X)) or real(X, *a, **k))
    agent = only(LearnerAgent(campaign(batch_size=50), "c1"), "gp", refit_every=3)
    data = smooth(12, batch_size=50)
    for n in range(1, 13):
        update(agent, data[:n])
    assert calls == [4, 7, 10]


# --- stopping ------------------------------------------------------------------------------------


def series(values, direction="maximize"):
    return [sample(i, {"a": 0.1 + 0.01 * i, "b": 0.0}, {"y": v}) for i, v in enumerate(values)]


def test_stall_fires_on_a_flat_sequence_and_not_on_an_improving_one():
    up = Objective(name="y", direction="maximize")
    flat = series([1.0 + 0.001 * (i % 3) for i in range(20)])
    assert stall(flat, up, [], 10, 0.01)[0]
    assert not stall(flat[:19], up, [], 10, 0.01)[0]  # judged only once 2 x stall_after are measured
    improving = series([1.0 + 0.1 * i for i in range(20)])
    assert not stall(improving, up, [], 10, 0.01)[0]
    down = Objective(name="y", direction="minimize")
    assert stall(flat, down, [], 10, 0.01)[0]
    assert not stall(series([5.0 - 0.2 * i for i in range(20)]), down, [], 10, 0.01)[0]


def test_stall_stops_the_campaign_with_its_reason_and_defaults_from_the_batch_size():
    agent = only(LearnerAgent(campaign(batch_size=2), "c1"))  # no surrogates: only the stopping rule
    assert agent.options.stall_after == 10 and agent.options.min_improvement == 0.01
    assert LearnerOptions.from_spec(SimpleNamespace(batch_size=4)).stall_after == 20
    flat = series([2.0] * 19 + [2.01])
    assert not update(agent, flat[:19]).recommend_stop
    message = update(agent, flat)
    assert message.recommend_stop and "improvement stalled" in message.reason
    assert not update(agent, series([1.0 + 0.1 * i for i in range(30)])).recommend_stop


def test_stall_options_come_from_the_campaigns_learner_section():
    spec = SimpleNamespace(batch_size=3, learner={"stall_after": 4, "min_improvement": 0.05, "surrogates": ["gp"]})
    options = LearnerOptions.from_spec(spec)
    assert (options.stall_after, options.min_improvement, options.surrogates) == (4, 0.05, ("gp",))
    assert options.refit_every == 10  # max(10, 2 x batch size)
    assert LearnerOptions.from_spec(SimpleNamespace(batch_size=8)).refit_every == 16
    by_designer = {name: LearnerOptions.from_spec(SimpleNamespace(batch_size=3, designer=SimpleNamespace(strategy=name)))
                   .surrogates for name in ("bayesian", "gradient", "sobol")}
    assert by_designer == {"bayesian": ("gp",), "gradient": ("ensemble",), "sobol": ()}
    with pytest.raises(ValueError, match="unknown model"):
        LearnerOptions.from_spec(SimpleNamespace(batch_size=3, learner={"surrogates": ["forest"]}))


def test_stall_is_judged_on_feasible_samples_only():
    up = Objective(name="y", direction="maximize")
    from athanor.spec import OutcomeConstraint

    cap = [OutcomeConstraint(name="z", upper=0.0)]
    data = [sample(i, {"a": 0.1, "b": 0.0}, {"y": 1.0, "z": -1.0}) for i in range(10)]
    # the last ten are better but infeasible: no feasible improvement, so stalled
    data += [sample(10 + i, {"a": 0.2, "b": 0.0}, {"y": 5.0 + i, "z": 1.0}) for i in range(10)]
    assert stall(data, up, cap, 10, 0.01)[0]
    data[-1]["values"] = {"y": 3.0, "z": -1.0}  # one feasible improvement
    assert not stall(data, up, cap, 10, 0.01)[0]


def test_target_met_still_stops():
    spec = campaign(objectives=[{"name": "y", "direction": "target", "target": 2.0, "tolerance": 0.05}])
    agent = only(LearnerAgent(spec, "c1"))
    assert not update(agent, series([1.0, 1.5])).recommend_stop
    message = update(agent, series([1.0, 1.5, 1.98]))
    assert message.recommend_stop and message.reason == "sample s2 meets every target"
    assert message.best["sample_id"] == "s2"
