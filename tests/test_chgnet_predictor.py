"""CHGNet as a differentiable predictor (SMOACS): templates, mixed embeddings, lattice, graphs, designer.

The independent source is CHGNet itself: a one-hot candidate must give the energy CHGNet's own
`predict_structure` gives for the same ideal crystal, built here with pymatgen (for the double
perovskite, as the 40-atom rock-salt ordered supercell, not the 10-atom cell the template uses).
Reference energies of the binaries are a table (a test double) except in the slow test against the world.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from athanor.errors import AthanorError
from athanor.planners.chgnet_predictor import ChgnetPredictor, load_chgnet
from athanor.planners.gradient import GradientStrategy
from athanor.planners.base import Observation
from athanor.planners.relaxation import RelaxedCandidates
from athanor.planners.space import DesignSpace
from athanor.spec import parse_campaign

ROOT = Path(__file__).resolve().parents[1]
A_SITE, B_SITE = ["Sr", "Ba", "K", "La"], ["Ti", "Zr", "Nb", "Al"]
TABLE = {("Sr", 2): -14.0, ("Ba", 2): -13.5, ("K", 1): -6.0, ("La", 3): -21.0, ("La", 2): -15.0,
         ("Ti", 4): -26.0, ("Ti", 3): -21.5, ("Ti", 2): -17.0, ("Zr", 4): -28.0, ("Nb", 5): -33.0,
         ("Nb", 4): -28.5, ("Nb", 3): -24.0, ("Al", 3): -19.0}


def table(element, charge, anion):
    assert anion == "O"
    return TABLE[(element, charge)]


def campaign(extra_b2: bool = False, world: str = "perovskite", a_site=tuple(A_SITE), b_site=tuple(B_SITE)) -> str:
    b2 = "\n    - {type: categorical, name: b2_site, choices: [Ti, Zr, Nb]}" if extra_b2 else ""
    return f"""
campaign: smoacs_test
seed: 0
space:
  parameters:
    - {{type: categorical, name: a_site, choices: [{', '.join(a_site)}]}}
    - {{type: categorical, name: b_site, choices: [{', '.join(b_site)}]}}{b2}
objectives:
  - {{name: lattice_a, direction: target, target: 4.0, tolerance: 0.04}}
outcome_constraints:
  - {{name: reaction_energy, upper: -0.05}}
  - {{name: tolerance_factor, lower: 0.9, upper: 1.0}}
budget: {{experiments: 4}}
designer:
  strategy: gradient
  options:
    predictor: chgnet
    sites: {{a_site: 1, b_site: 1, anion: {{elements: [O], multiplicity: 3}}}}
world: {{kind: {world}}}
"""


def candidates_of(spec, sites=None):
    sites = sites or spec.designer.options["sites"]
    return RelaxedCandidates(DesignSpace(spec.space), sites, spec.outcome_constraints, None,
                             torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def spec():
    return parse_campaign(campaign(), "test.yaml")


@pytest.fixture(scope="module")
def predictor(spec):
    return ChgnetPredictor(table).bind(candidates_of(spec))


def one_hot(predictor_or_cands, **inputs):
    cands = predictor_or_cands
    return cands.features(inputs)[None].float()


def ideal_perovskite(a_el, b_el, a):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), [a_el, b_el, "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])


def energy(predictor, cands, a, **inputs):
    w, q = predictor._mixture(one_hot(cands, **inputs), None)
    return predictor.energy_per_atom(predictor._site_terms(w, q), torch.tensor([a]))


@pytest.mark.parametrize("a_el,b_el,a", [("Sr", "Ti", 3.95), ("K", "Nb", 4.05), ("La", "Al", 3.82)])
def test_one_hot_energy_is_chgnets_own_on_the_ideal_cell(spec, predictor, a_el, b_el, a):
    expected = float(load_chgnet().predict_structure(ideal_perovskite(a_el, b_el, a), task="e")["e"])
    got = float(energy(predictor, candidates_of(spec), a, a_site=a_el, b_site=b_el))
    assert got == pytest.approx(expected, abs=2e-4)


def test_double_perovskite_template_is_the_rock_salt_ordered_supercell():
    from pymatgen.core import Lattice, Structure

    spec = parse_campaign(campaign(extra_b2=True), "test.yaml")
    sites = {"a_site": 2, "b_site": 1, "b2_site": 1, "anion": {"elements": ["O"], "multiplicity": 6}}
    cands = candidates_of(spec, sites)
    predictor = ChgnetPredictor(table, template="double_perovskite").bind(cands)
    a = 4.1
    species, coords = [], []
    for i, j, k in np.ndindex(2, 2, 2):  # B on even, B2 on odd sites of the B sublattice
        species += ["Ba", "Ti" if (i + j + k) % 2 == 0 else "Zr", "O", "O", "O"]
        coords += [[i, j, k], [i + .5, j + .5, k + .5], [i + .5, j + .5, k], [i + .5, j, k + .5], [i, j + .5, k + .5]]
    supercell = Structure(Lattice.cubic(2 * a), species, np.array(coords) / 2)
    expected = float(load_chgnet().predict_structure(supercell, task="e")["e"])
    X = cands.features({"a_site": "Ba", "b_site": "Ti", "b2_site": "Zr"})[None].float()
    w, q = predictor._mixture(X, None)
    got = float(predictor.energy_per_atom(predictor._site_terms(w, q), torch.tensor([a])))
    assert got == pytest.approx(expected, abs=1e-3)


def test_energy_is_differentiable_in_the_lattice_and_the_distributions(spec, predictor):
    cands = candidates_of(spec)
    x0 = 0.5 * (one_hot(cands, a_site="Sr", b_site="Ti") + one_hot(cands, a_site="Ba", b_site="Ti"))

    def e(X, a):
        w, q = predictor._mixture(X, None)
        return predictor.energy_per_atom(predictor._site_terms(w, q), a)

    X = x0.clone().requires_grad_(True)
    a = torch.tensor([3.98], requires_grad=True)
    dX, da = torch.autograd.grad(e(X, a).sum(), [X, a])
    h = 2e-3
    fd_a = (e(x0, a.detach() + h) - e(x0, a.detach() - h)) / (2 * h)
    assert float(da) == pytest.approx(float(fd_a), rel=0.03, abs=2e-3)
    shift = torch.zeros_like(x0)
    shift[0, 0], shift[0, 1] = h, -h  # Sr -> Ba, staying on the simplex
    fd_x = (e(x0 + shift, a.detach()) - e(x0 - shift, a.detach())) / (2 * h)
    assert float(dX[0, 0] - dX[0, 1]) * h == pytest.approx(float(fd_x) * h, rel=0.05, abs=1e-5)
    assert abs(float(fd_x)) > 1e-3  # the mixture is not flat: Sr and Ba differ


def test_pressure_is_minus_the_volume_derivative_and_is_differentiable(spec, predictor):
    cands = candidates_of(spec)
    w, q = predictor._mixture(one_hot(cands, a_site="Ba", b_site="Zr"), None)
    terms = predictor._site_terms(w, q)
    a = torch.tensor([4.3], requires_grad=True)
    pressure = predictor.pressure(terms, a)
    h = 2e-3
    volume = lambda x: x ** 3  # noqa: E731 -- one formula unit in the cubic cell
    e_cell = lambda x: 5 * predictor.energy_per_atom(terms, torch.tensor([x]))  # noqa: E731
    expected = -(e_cell(4.3 + h) - e_cell(4.3 - h)) / (volume(4.3 + h) - volume(4.3 - h)) * 160.21766208
    assert float(pressure) == pytest.approx(float(expected), rel=0.03, abs=0.05)
    (bulk,) = torch.autograd.grad(pressure.sum(), a)  # stretched past equilibrium: tension grows with a
    assert float(pressure) < 0 and float(bulk) < 0


def test_the_graph_changes_at_a_cutoff_and_the_energy_stays_continuous(spec, predictor):
    cands = candidates_of(spec)
    edge = next(b for b in predictor._breaks if 3.7 < b < 4.3)
    below, above = edge - 1e-4, edge + 1e-4
    key_below, topo_below = predictor._topology(below)
    key_above, topo_above = predictor._topology(above)
    assert key_below != key_above
    assert topo_below.atom_graph.shape != topo_above.atom_graph.shape or (
        (topo_below.bond_graph is None) != (topo_above.bond_graph is None)
        or topo_below.bond_graph.shape != topo_above.bond_graph.shape)
    e_below = float(energy(predictor, cands, below, a_site="Sr", b_site="Ti"))
    e_above = float(energy(predictor, cands, above, a_site="Sr", b_site="Ti"))
    assert abs(e_below - e_above) < 2e-3


def test_without_a_latent_the_lattice_is_relaxed_to_the_energy_minimum(spec, predictor):
    cands = candidates_of(spec)
    out = predictor(one_hot(cands, a_site="Sr", b_site="Ti"))
    a = float(out["lattice_a"])
    assert abs(float(out["pressure"])) < 0.5  # GPa
    scan = torch.linspace(a - 0.04, a + 0.04, 9)
    w, q = predictor._mixture(one_hot(cands, a_site="Sr", b_site="Ti").expand(9, -1), None)
    energies = predictor.energy_per_atom(predictor._site_terms(w, q), scan)
    assert float(out["energy_per_atom"]) <= float(energies.min()) + 1e-4
    assert 3.85 < a < 4.05  # CHGNet's cubic SrTiO3; the Shannon-radius start was 4.01


@pytest.mark.parametrize("a_el,b_el,states", [("Sr", "Ti", (2, 4)), ("La", "Al", (3, 3)), ("K", "Nb", (1, 5))])
def test_reaction_energy_subtracts_the_binaries_of_the_neutral_pattern(spec, predictor, a_el, b_el, states):
    out = predictor(one_hot(candidates_of(spec), a_site=a_el, b_site=b_el))
    reference = TABLE[(a_el, states[0])] + TABLE[(b_el, states[1])]
    expected = (5 * float(out["energy_per_atom"]) - reference) / 5
    assert float(out["reaction_energy"]) == pytest.approx(expected, abs=1e-4)


def test_of_two_neutral_patterns_the_lower_binaries_are_the_reference(spec, predictor):
    """LaTiO3 is La3+Ti3+ or La2+Ti4+: stability is judged against the lower-lying pair of binaries
    (here ½La2O3 + ½Ti2O3, -42.5 eV, against LaO + TiO2, -41 eV), and without a La2+ binary at all
    the La3+Ti3+ pair still applies: the compound is not thereby unstable."""
    out = predictor(one_hot(candidates_of(spec), a_site="La", b_site="Ti"))
    lower = TABLE[("La", 3)] + TABLE[("Ti", 3)]
    assert lower < TABLE[("La", 2)] + TABLE[("Ti", 4)]
    assert float(out["reaction_energy"]) == pytest.approx((5 * float(out["energy_per_atom"]) - lower) / 5, abs=1e-4)

    def without_la2(element, charge, anion):
        if (element, charge) == ("La", 2):
            raise AthanorError("no binary")
        return table(element, charge, anion)

    alone = ChgnetPredictor(without_la2).bind(candidates_of(spec))(one_hot(candidates_of(spec), a_site="La", b_site="Ti"))
    assert float(alone["reaction_energy"]) == pytest.approx(float(out["reaction_energy"]), abs=1e-4)


def test_an_ion_without_a_reference_counts_as_unstable(spec):
    def without_potassium(element, charge, anion):
        if element == "K":
            raise AthanorError("no binary")
        return table(element, charge, anion)

    predictor = ChgnetPredictor(without_potassium).bind(candidates_of(spec))
    cands = candidates_of(spec)
    unstable = predictor(one_hot(cands, a_site="K", b_site="Nb"))["reaction_energy"]
    usual = predictor(one_hot(cands, a_site="Sr", b_site="Ti"))["reaction_energy"]
    assert float(unstable) > float(usual) + 3.0


def test_predictor_without_its_sites_is_refused_with_the_roles_named(spec):
    with pytest.raises(ValueError, match="B \\(b_site_typo\\)"):
        ChgnetPredictor(table, roles={"B": "b_site_typo"}).bind(candidates_of(spec))
    with pytest.raises(ValueError, match="template: 'spinel'"):
        ChgnetPredictor(table, template="spinel")


def neutral(inputs) -> bool:  # an independent judge: pymatgen's oxidation-state guesses
    from pymatgen.core import Composition

    return bool(Composition(f"{inputs['a_site']}{inputs['b_site']}O3").oxi_state_guesses())


def strategy(spec, predictor, **options):
    return GradientStrategy(DesignSpace(spec.space), spec.objectives, seed=0, constraints=spec.outcome_constraints,
                            prior=predictor, sites=spec.designer.options["sites"], n_candidates=8, steps=12,
                            rounds=2, model="gp", n_init=2, **options)


def test_gradient_designer_through_chgnet_proposes_neutral_candidates_and_says_so(spec):
    designer = strategy(spec, ChgnetPredictor(table))
    chosen = designer.propose([], 2, [])
    assert len(chosen) == 2 and len({tuple(c.inputs.items()) for c in chosen}) == 2
    assert all(neutral(c.inputs) for c in chosen)
    assert all("prior alone" in c.rationale for c in chosen)
    for c in chosen:
        assert {"lattice_a", "reaction_energy", "tolerance_factor"} <= set(c.predicted)
        assert math.isfinite(c.predicted["lattice_a"].mean) and 3.5 < c.predicted["lattice_a"].mean < 4.6
    timing = designer.last_timing
    assert timing["candidates"] == 8 and timing["distinct"] >= 1 and timing["candidate_optimizations_per_s"] > 0


def test_measurements_correct_the_pretrained_prediction(spec):
    model = ChgnetPredictor(table)
    designer = strategy(spec, model)
    cands = designer.candidates
    measured = [{"a_site": "Sr", "b_site": "Ti"}, {"a_site": "Ba", "b_site": "Zr"}, {"a_site": "K", "b_site": "Nb"}]
    X = torch.stack([cands.features(m) for m in measured]).float()
    with torch.no_grad():
        prior = model(X)
    # The lab finds every lattice 0.1 Å longer than the ideal cubic cell, and stability as predicted.
    history = [Observation(inputs=m, values={"lattice_a": float(prior["lattice_a"][i]) + 0.1,
                                             "reaction_energy": float(prior["reaction_energy"][i])})
               for i, m in enumerate(measured)]
    chosen = designer.propose(history, 1, [])
    assert designer.model_version.endswith("+prior") and "correcting the prior" in chosen[0].rationale
    with torch.no_grad():
        corrected = designer._predict(X.to(designer.dtype))["lattice_a"][0]
    for i in range(3):
        assert float(corrected[i]) == pytest.approx(float(prior["lattice_a"][i]) + 0.1, abs=0.03)


def test_chgnet_predictor_needs_a_world_with_reference_energies(spec, monkeypatch):
    from athanor import registry
    from athanor.agents.designer import make_strategy

    class WorldWithoutBinaries:  # a world that cannot say what the competing phases' energies are
        pass

    monkeypatch.setattr(registry, "make_world", lambda spec: WorldWithoutBinaries())
    with pytest.raises(AthanorError, match="predictor: chgnet needs the competing binaries"):
        make_strategy(spec)
    typo = spec.model_copy(update={"designer": spec.designer.model_copy(
        update={"options": {**spec.designer.options, "template": "spinel"}})})
    monkeypatch.setattr(registry, "make_world", lambda spec: type("W", (), {"reference_energy": staticmethod(table)})())
    with pytest.raises(AthanorError, match="template: 'spinel' is not one of perovskite, double_perovskite"):
        make_strategy(typo)
    corrected = make_strategy(spec)  # by default the measurements correct CHGNet: it is the prior
    assert isinstance(corrected.prior, ChgnetPredictor) and corrected.predictor is None
    alone = spec.model_copy(update={"designer": spec.designer.model_copy(
        update={"options": {**spec.designer.options, "residual": False}})})
    trusted = make_strategy(alone)
    assert isinstance(trusted.predictor, ChgnetPredictor) and trusted.prior is None


@pytest.mark.slow
def test_predictor_agrees_with_the_worlds_relaxation_on_a_cubic_cell(tmp_path):
    """The world relaxes atoms and cell with CHGNet's optimizer; a pure cubic cell keeps its ideal
    positions, so the template's Newton-relaxed lattice and energy must agree with it."""
    from athanor.simulators.perovskite import PerovskiteWorld

    world = PerovskiteWorld(cache_dir=str(tmp_path))
    spec = parse_campaign(campaign(a_site=("Sr", "Ca"), b_site=("Ti", "Zr")), "test.yaml")
    cands = candidates_of(spec)
    predictor = ChgnetPredictor(world.reference_energy).bind(cands)
    truth = world.evaluate({}, {"a_site": "Sr", "b_site": "Ti"})
    out = predictor(one_hot(cands, a_site="Sr", b_site="Ti"))
    assert float(out["lattice_a"]) == pytest.approx(truth["lattice_a"], abs=0.01)
    assert float(out["reaction_energy"]) == pytest.approx(truth["reaction_energy"], abs=0.01)


@pytest.mark.slow
def test_shipped_smoacs_campaign_runs_through_the_agents_and_repeats_from_its_seed(tmp_path, ray_address):
    """configs/perovskite_smoacs.yaml, cut to 2 A × 2 B choices and 2 samples, through the real
    runtime: the designer agent builds CHGNet on the world's binaries, the world relaxes what it
    proposes, and the same seed proposes the same candidates again."""
    import yaml

    from athanor.campaign import execute, prepare

    config = yaml.safe_load((ROOT / "configs" / "perovskite_smoacs.yaml").read_text())
    config["space"]["parameters"][0]["choices"] = ["Sr", "Ca"]
    config["space"]["parameters"][1]["choices"] = ["Ti", "Zr"]
    config["budget"] = {"experiments": 2}
    config["designer"]["options"].update(n_candidates=4, steps=6, rounds=1)
    config["world"]["options"]["cache_dir"] = str(tmp_path / "cache")
    path = tmp_path / "smoacs.yaml"
    path.write_text(yaml.safe_dump(config))
    runs = []
    for name in ("first", "again"):
        store, spec = prepare(path, tmp_path / name, ray_address=ray_address)
        summary = execute(store, spec, tmp_path / name)
        assert summary["status"] == "completed" and summary["n_experiments"] == 2
        runs.append(store.samples())
    for sample in runs[0]:
        assert sample["state"] == "learned" and neutral(sample["inputs"])
        assert "prior alone" in sample["candidate"]["rationale"]
        assert 3.7 < sample["values"]["lattice_a"] < 4.4 and math.isfinite(sample["values"]["reaction_energy"])
        predicted = sample["candidate"]["predicted"]["lattice_a"]["mean"]
        assert predicted == pytest.approx(sample["values"]["lattice_a"], abs=0.05)  # a pure cubic cell: CHGNet on both sides
    assert [s["inputs"] for s in runs[0]] == [s["inputs"] for s in runs[1]]
