"""The gradient strategy: oxidation masks, annealing, the alloy template, the ensemble, Stoner, contract."""

from __future__ import annotations

import pytest
import torch
from pymatgen.core import Composition

from athanor.planners.base import Observation
from athanor.planners.ensemble import DeepEnsemble
from athanor.planners.gradient import GradientStrategy, shannon_radius
from athanor.planners.oxidation import Site, allowed_states, charge_patterns, is_neutral
from athanor.planners.space import DesignSpace
from athanor.spec import Objective, OutcomeConstraint, Space

A = ["Ca", "Sr", "Ba", "K", "Na", "La"]
B = ["Ti", "Zr", "Nb", "Ta", "Sn", "Hf", "Al"]
PEROVSKITE_SITES = {"a_site": 1, "b_site": 1, "anion": {"elements": ["O"], "multiplicity": 3}}
PEROVSKITE_OBJECTIVES = [Objective(name="lattice_a", direction="target", target=3.95, tolerance=0.03),
                         Objective(name="reaction_energy", direction="minimize")]


def perovskite_space(anions: list[str] | None = None) -> DesignSpace:
    params = [{"type": "categorical", "name": "a_site", "choices": A},
              {"type": "categorical", "name": "b_site", "choices": B}]
    if anions:
        params.append({"type": "categorical", "name": "anion", "choices": anions})
    return DesignSpace(Space(parameters=params))


def perovskite_strategy(**options) -> GradientStrategy:
    return GradientStrategy(perovskite_space(), PEROVSKITE_OBJECTIVES, seed=0, sites=PEROVSKITE_SITES,
                            constraints=[OutcomeConstraint(name="tolerance_factor", lower=0.9, upper=1.0)], **options)


def toy_history() -> list[Observation]:
    """Made-up perovskite measurements: lattice_a grows with the A and B radii."""
    rows = [("Sr", "Ti"), ("Ba", "Zr"), ("K", "Nb"), ("La", "Al"), ("Ca", "Sn"), ("Ba", "Ti")]
    out = []
    for a, b in rows:
        ra, rb = shannon_radius(a, allowed_states(a)[-1], 12), shannon_radius(b, allowed_states(b)[-1], 6)
        out.append(Observation(inputs={"a_site": a, "b_site": b},
                               values={"lattice_a": 2.0 + 0.8 * ra + 1.2 * rb, "reaction_energy": -0.3 * ra + rb,
                                       "tolerance_factor": 0.95}))
    return out


def neutral(choice: dict[str, str], anion: str = "O") -> bool:
    formula = f"{choice['a_site']}{choice['b_site']}{choice.get('anion', anion)}3"
    return bool(Composition(formula).oxi_state_guesses())


# --- masks ---------------------------------------------------------------------------------------
def test_patterns_of_the_perovskite_template():
    sites = [Site("a_site", tuple(A)), Site("b_site", tuple(B)), Site("anion", ("O",), 3)]
    patterns = charge_patterns(sites)
    assert {tuple(p) for p in patterns.states} == {(1, 5, -2), (2, 4, -2), (3, 3, -2)}
    for states, mask in zip(patterns.states, patterns.masks):
        assert (states * [1, 1, 3]).sum() == 0
        for s, site in enumerate(sites):
            for e, el in enumerate(site.elements):
                assert mask[s, e] == (states[s] in allowed_states(el))
    assert allowed_states("Sr") == (2,)  # SMACT's +4 is no ICSD state: the intersection drops it


def test_no_decoded_candidate_ever_violates_neutrality():
    for anions in (None, ["O", "F", "S", "Cl"]):
        sites = dict(PEROVSKITE_SITES) if anions is None else {"a_site": 1, "b_site": 1, "anion": 3}
        s = GradientStrategy(perovskite_space(anions), PEROVSKITE_OBJECTIVES, sites=sites)
        gen = torch.Generator().manual_seed(1)
        P = len(s.template.patterns)
        decoded = set()
        for scale in (0.1, 1.0, 10.0):
            params = s.candidates.init_params(512, gen)
            params = {k: scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
            params["patterns"][:P] = 0.0
            params["patterns"][torch.arange(P), torch.arange(P)] = 1.0  # every pattern chosen at least once
            rows, X, patterns = s.candidates.decode(params)
            for row, p in zip(rows, patterns):
                states = s.template.patterns.states[p]
                choice = {**row}
                assert all(states[i] in allowed_states(choice.get(site.name, site.elements[0]))
                           for i, site in enumerate(s.template.patterns.sites))
                assert is_neutral({site.name: choice.get(site.name, site.elements[0])
                                   for site in s.template.patterns.sites}, s.template.patterns.sites)
                decoded.add(tuple(sorted(row.items())))
        for row in decoded:
            assert neutral(dict(row)), row
        assert len(decoded) > 10


def test_annealing_makes_every_site_one_hot():
    s = perovskite_strategy(n_candidates=64, steps=60)
    assert abs(s.temperature(0) - 1.0) < 1e-12 and abs(s.temperature(59) - 0.01) < 1e-12
    s._scale = s._scales(toy_history())
    s._model = DeepEnsemble(epochs=50).fit(torch.stack([s.candidates.features(o.inputs) for o in toy_history()]),
                                           torch.tensor([[o.values["lattice_a"], o.values["reaction_energy"]]
                                                         for o in toy_history()]))
    s._model_outputs = ["lattice_a", "reaction_energy"]
    params, _ = s.optimize()
    relaxed = s.candidates.relax(params, s.temperature(s.steps - 1))
    assert relaxed["dist"].max(-1).values.min() > 0.99
    assert relaxed["pattern_weights"].max(-1).values.min() > 0.99
    # and the relaxed features agree with the decoded one-hot ones
    _, X, _ = s.candidates.decode(params)
    assert (relaxed["features"] - X).abs().max() < 0.02


def test_tolerance_factor_in_closed_form():
    s = perovskite_strategy()
    P = len(s.template.patterns)
    # SrTiO3 (pattern +2/+4/−2): Shannon radii give t ≈ 1.00; BaTiO3 ≈ 1.06
    params = s.candidates.init_params(2, torch.Generator().manual_seed(0))
    params = {k: torch.zeros_like(v) for k, v in params.items()}
    params["logits"][0, 0, A.index("Sr")] = params["logits"][0, 1, B.index("Ti")] = 5.0
    params["logits"][1, 0, A.index("Ba")] = params["logits"][1, 1, B.index("Ti")] = 5.0
    pattern = [tuple(p) for p in s.template.patterns.states].index((2, 4, -2))
    params["patterns"][:, pattern] = 5.0
    tf = s.candidates.tolerance_factor(s.candidates.relax(params, 0.01))
    assert abs(float(tf[0]) - 1.00) < 0.01 and abs(float(tf[1]) - 1.06) < 0.01
    assert P == 3


# --- the alloy template ---------------------------------------------------------------------------
def test_alloy_template_finds_a_known_maximum_inside_the_bounded_simplex():
    space = DesignSpace(Space(composition={"elements": {"Fe": [0.1, 0.9], "Co": [0.0, 0.6], "Ni": [0.0, 0.5],
                                                        "Cr": [0.0, 0.2]}}))
    best = torch.tensor([0.45, 0.3, 0.15, 0.10], dtype=torch.double)

    def toy(X: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"m": 2.0 - ((X - best) ** 2).sum(-1) * 10}

    s = GradientStrategy(space, [Objective(name="m", direction="maximize")], predictor=toy, n_candidates=64,
                         steps=150, rounds=3)
    (c,) = s.propose([], 1, [])
    x = torch.tensor([c.inputs[el] for el in ["Fe", "Co", "Ni", "Cr"]], dtype=torch.double)
    assert (x - best).abs().max() < 0.02 and abs(float(x.sum()) - 1) < 1e-9
    assert c.predicted["m"].mean > 1.99 and c.acquisition_value is not None and c.rationale


# --- a prior corrected by the ensemble -----------------------------------------------------------------
@pytest.mark.parametrize("model", ["ensemble", "gp"])
def test_a_prior_guides_the_first_batch_and_the_model_learns_its_error(model):
    space = DesignSpace(Space(composition={"elements": {"Fe": [0.0, 1.0], "Co": [0.0, 1.0]}}))
    objective = [Objective(name="m", direction="maximize")]

    def prior(X: torch.Tensor) -> dict[str, torch.Tensor]:  # right about the trend, blind to a dip
        return {"m": 2.0 * X[:, 1]}

    def truth(co: float) -> float:
        return 2.0 * co - 3.0 * max(0.0, co - 0.6)  # the real optimum is at Co = 0.6, not at 1

    s = GradientStrategy(space, objective, prior=prior, n_init=3, n_candidates=32, steps=80,
                         ensemble={"epochs": 200}, model=model)
    (first,) = s.propose([], 1, [])
    assert "prior alone" in first.rationale
    assert first.inputs["Co"] > 0.8  # the prior's optimum, not a space-filling design
    no_prior = GradientStrategy(space, objective, n_init=3).propose([], 2, [])
    assert all("initial design" in c.rationale for c in no_prior)

    cobalt = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.1, 0.3, 0.5, 0.7, 0.9]
    history = [Observation(inputs={"Fe": 1 - co, "Co": co}, values={"m": truth(co)}) for co in cobalt]
    proposals = s.propose(history, 2, [])
    assert all("correcting the prior" in c.rationale for c in proposals)
    assert s.model_version.startswith(model) and s.model_version.endswith("+prior")
    predicted = s._predict(torch.tensor([[0.4, 0.6], [0.0, 1.0]], dtype=s.dtype))["m"][0]
    assert abs(float(predicted[0]) - 1.2) < 0.15 and abs(float(predicted[1]) - 0.8) < 0.25  # prior: 1.2, 2.0
    assert all(abs(c.inputs["Co"] - 0.6) < 0.2 for c in proposals)


def test_target_pull_prefers_the_mean_closest_to_a_narrow_window():
    space = DesignSpace(Space(composition={"elements": {"Fe": [0.0, 1.0], "Co": [0.0, 1.0]}}))
    objective = [Objective(name="m", direction="target", target=1.0, tolerance=0.02)]

    def uncertain(X: torch.Tensor) -> dict[str, torch.Tensor]:  # optimism covers most of the line
        return {"m": (2.0 * X[:, 1], torch.full_like(X[:, 1], 0.5))}

    def chosen(pull: float) -> float:
        s = GradientStrategy(space, objective, predictor=uncertain, kappa=1.0, target_pull=pull,
                             n_candidates=32, steps=60, seed=3)
        (c,) = s.propose([], 1, [])
        return abs(2.0 * c.inputs["Co"] - 1.0)

    assert chosen(0.1) < 0.01
    assert chosen(0.0) > chosen(0.1)  # without the pull, a tie at zero loss goes to any candidate


# --- the ensemble ----------------------------------------------------------------------------------
def test_ensemble_fits_and_is_uncertain_away_from_data():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 2, generator=g)
    f = lambda X: torch.sin(3 * X[:, :1]) + X[:, 1:] ** 2  # noqa: E731
    model = DeepEnsemble(epochs=300, seed=0).fit(X, f(X))
    Xt = torch.rand(200, 2, generator=g)
    mean, sd = model.predict(Xt)
    assert mean.shape == (200, 1) and sd.shape == (200, 1)
    assert float((mean - f(Xt)).abs().mean()) < 0.1
    _, sd_far = model.predict(torch.tensor([[3.0, 3.0], [-2.0, 4.0]]))
    assert float(sd_far.min()) > 2 * float(sd.mean())
    Xg = Xt[:5].clone().requires_grad_(True)
    model.predict(Xg)[0].sum().backward()
    assert Xg.grad is not None and torch.isfinite(Xg.grad).all()
    again = DeepEnsemble(epochs=300, seed=0).fit(X, f(X))
    assert again.version == model.version and torch.equal(again.predict(Xt)[0], mean)


# --- the Stoner model as predictor --------------------------------------------------------------------
def test_stoner_predictor_reaches_the_fe_co_maximum():
    from athanor.simulators.stoner import ELEMENTS, StonerModel

    model = StonerModel()
    order = ["Fe", "Co", "Ni"]
    index = torch.tensor([ELEMENTS.index(e) for e in order])

    def full(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(ELEMENTS), dtype=torch.double).index_put((index,), x)

    def stoner(X: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"magnetic_moment": torch.stack([model.state(full(x))["moment"] for x in X])}

    reference = max(float(model.state(full(torch.tensor([fe, 1 - fe, 0.0], dtype=torch.double)))["moment"])
                    for fe in (0.75, 0.8, 0.85))
    assert 2.3 < reference < 2.45
    space = DesignSpace(Space(composition={"elements": {e: [0.0, 1.0] for e in order}}))
    s = GradientStrategy(space, [Objective(name="magnetic_moment", direction="maximize")], predictor=stoner,
                         n_candidates=8, steps=25, rounds=2, lr=0.2)
    proposals = s.propose([], 2, [])
    assert len(proposals) == 2
    for c in proposals:
        moment = float(model.state(full(torch.tensor([c.inputs[e] for e in order], dtype=torch.double)))["moment"])
        assert moment > reference - 0.05, (c.inputs, moment)
        assert abs(c.predicted["magnetic_moment"].mean - moment) < 1e-9


# --- the strategy contract --------------------------------------------------------------------------
def test_proposals_never_repeat_history_or_pending_and_are_deterministic():
    history = toy_history()
    pending = [Observation(inputs={"a_site": "Ba", "b_site": "Hf"}), Observation(inputs={"a_site": "Sr", "b_site": "Zr"})]
    seen = {tuple(sorted(o.inputs.items())) for o in [*history, *pending]}
    first = perovskite_strategy(n_candidates=64, steps=60, ensemble={"epochs": 100}).propose(history, 4, pending)
    second = perovskite_strategy(n_candidates=64, steps=60, ensemble={"epochs": 100}).propose(history, 4, pending)
    assert [c.inputs for c in first] == [c.inputs for c in second]
    assert [c.acquisition_value for c in first] == [c.acquisition_value for c in second]
    keys = [tuple(sorted(c.inputs.items())) for c in first]
    assert len(first) == 4 and len(set(keys)) == 4 and not set(keys) & seen
    for c in first:
        assert neutral(c.inputs)
        assert set(c.predicted) >= {"lattice_a", "reaction_energy", "tolerance_factor"}


def test_too_little_history_gives_neutral_space_filling():
    s = perovskite_strategy()
    first = s.propose(toy_history()[:2], 5, [])
    assert len(first) == 5 and all(neutral(c.inputs) for c in first)
    assert all("initial design" in c.rationale for c in first)
    keys = {tuple(sorted(c.inputs.items())) for c in first}
    assert len(keys) == 5
