"""Phase identification by whole-pattern fitting, and the characterizer reading powder patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from athanor.agents.characterizer import CharacterizerAgent
from athanor.agents.phase_id import PhaseIdError, identify_phases
from athanor.messages import Fault, Measurement, parse_message
from athanor.simulators.solid_state import SolidStateWorld
from athanor.spec import load_campaign
from conftest import ROOT

NOISE = 0.05  # the strongest point has 1/noise² = 400 counts: a quick scan


@pytest.fixture(scope="module")
def world() -> SolidStateWorld:
    return SolidStateWorld()


def mixture(fractions: dict[str, float], sizes: dict[str, float] | None = None) -> dict:
    """A product as the world describes one: weight fractions and crystallite sizes (nm)."""
    names = list(fractions)
    return {"target": names[0], "precursors": names[1:], "phases": dict(fractions),
            "crystallite_nm": sizes or {n: 150.0 for n in names}}


def noisy(world, product, seed, noise=NOISE):
    return world.pattern(product, np.random.default_rng(seed), counts=1.0 / noise ** 2)


MIXTURES = [  # (70 %, 30 %, the candidates analyzed)
    ("MgO", "Al2O3", ["MgAl2O4", "MgO", "Al2O3"]),
    ("ZnFe2O4", "Fe2O3", ["ZnFe2O4", "ZnO", "Fe2O3", "Fe3O4"]),
    ("MgAl2O4", "MgO", ["MgAl2O4", "MgO", "Al2O3"]),
]


@pytest.mark.parametrize("major,minor,candidates", MIXTURES)
def test_70_30_mixtures_are_recovered_with_honest_uncertainties(world, major, minor, candidates):
    for seed in range(3):
        # The major phase fine-grained (broader peaks), the minor one coarse, as after a partial reaction.
        product = mixture({major: 0.7, minor: 0.3}, {major: 40.0, minor: 150.0})
        fit = identify_phases(*noisy(world, product, seed), candidates)
        for phase, truth in ((major, 0.7), (minor, 0.3)):
            error = fit.weight_fractions[phase] - truth
            assert abs(error) < 0.05, (seed, phase, fit.weight_fractions)
            assert 0 < fit.uncertainties[phase] < 0.05
            assert abs(error) < 4 * fit.uncertainties[phase], (seed, phase, error, fit.uncertainties[phase])
        assert sorted(fit.detected) == sorted([major, minor])  # the absent candidates are not detected
        assert sum(fit.weight_fractions.values()) == pytest.approx(1.0)
        assert 0.8 < fit.chi2 < 1.25 and fit.unexplained < 0.05
        assert fit.crystallite_nm[major] == pytest.approx(40.0, rel=0.15)


def test_pure_phase_is_all_of_the_sample(world):
    fit = identify_phases(*noisy(world, mixture({"ZnFe2O4": 1.0}, {"ZnFe2O4": 25.0}), 7),
                          ["ZnFe2O4", "ZnO", "Fe2O3", "Fe3O4"])
    assert fit.detected == ["ZnFe2O4"]
    assert fit.weight_fractions["ZnFe2O4"] > 0.97
    for other in ("ZnO", "Fe2O3", "Fe3O4"):
        assert fit.weight_fractions[other] < 0.01 + 3 * fit.uncertainties[other]


def test_noiseless_pattern_is_recovered_exactly_and_a_shift_is_refined(world):
    tt, y = world.pattern(mixture({"MgAl2O4": 0.7, "MgO": 0.3}, {"MgAl2O4": 30.0, "MgO": 150.0}))
    fit = identify_phases(tt + 0.06, y, ["MgAl2O4", "MgO", "Al2O3"])  # a 2θ zero error of 0.06°
    assert fit.weight_fractions["MgAl2O4"] == pytest.approx(0.7, abs=1e-3)
    assert fit.zero_shift == pytest.approx(0.06, abs=0.005)


def test_a_minor_phase_and_its_group_uncertainty(world):
    product = mixture({"MgAl2O4": 0.9, "MgO": 0.06, "Al2O3": 0.04}, {"MgAl2O4": 50.0, "MgO": 150.0, "Al2O3": 150.0})
    fit = identify_phases(*noisy(world, product, 3, noise=0.02), ["MgAl2O4", "MgO", "Al2O3"])
    assert set(fit.detected) == {"MgAl2O4", "MgO", "Al2O3"}
    value, sigma = fit.combined(["MgO", "Al2O3"])
    assert value == pytest.approx(0.10, abs=4 * sigma) and 0 < sigma < 0.02


def test_a_synthesized_product_is_read_back(world):
    """A partial reaction in the world (ZnO + Fe2O3 → ZnFe2O4): its true fractions from the pattern."""
    w = SolidStateWorld(target="ZnFe2O4", precursors=["ZnO", "Fe2O3"])
    product = w.synthesize({"inputs": {"temperature_c": 850, "time_h": 2}}, "S0001:synthesis")
    assert 0.3 < product["phases"]["ZnFe2O4"] < 0.8  # really a mixture, of fine (15 nm) spinel
    fit = identify_phases(*noisy(w, product, 11, noise=0.03), ["ZnFe2O4", "ZnO", "Fe2O3", "Fe3O4"])
    for phase, truth in product["phases"].items():
        assert fit.weight_fractions[phase] == pytest.approx(truth, abs=max(0.03, 4 * fit.uncertainties[phase]))


@pytest.mark.parametrize("two_theta,intensity,message", [
    (np.arange(10, 80, 0.02), np.r_[np.ones(100), np.nan, np.ones(3399)], "non-finite intensity"),
    ([], [], "empty pattern"),
    (np.arange(10, 80, 0.02), np.ones(10), "differ in length"),
    (np.arange(10, 80, 0.02), np.zeros(3500), "no counts"),
    (["a"] * 100, np.ones(100), "not numeric"),
])
def test_unusable_patterns_are_refused_in_one_line(two_theta, intensity, message):
    with pytest.raises(PhaseIdError, match=message) as err:
        identify_phases(two_theta, intensity, ["MgO"])
    assert "\n" not in str(err.value)


def test_unknown_candidate_is_refused(world):
    tt, y = world.pattern(mixture({"MgO": 1.0}))
    with pytest.raises(PhaseIdError, match="unknown phase 'Unobtainium'"):
        identify_phases(tt, y, ["MgO", "Unobtainium"])


# --- the characterizer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def characterizer() -> CharacterizerAgent:
    spec = load_campaign(ROOT / "configs" / "solid_state_spinel.yaml").model_dump(mode="json")
    return CharacterizerAgent(spec, "c1")


def documents(two_theta, intensity, **start):
    start = {"uid": "0123456789abcdef", "plan_name": "characterize", "channels": {},
             "pattern_fields": {"two_theta": "xrd_two_theta", "intensity": "xrd_intensity"}, **start}
    event = {"uid": "e1", "seq_num": 1,
             "data": {"xrd_two_theta": [float(x) for x in two_theta], "xrd_intensity": [float(v) for v in intensity]}}
    return [("start", start), ("descriptor", {"uid": "d1"}), ("event", event), ("stop", {"uid": "s1"})]


def test_characterizer_reports_fractions_with_uncertainties(world, characterizer):
    product = mixture({"ZnFe2O4": 0.7, "ZnO": 0.1, "Fe2O3": 0.2}, {"ZnFe2O4": 40.0, "ZnO": 150.0, "Fe2O3": 150.0})
    docs = documents(*noisy(world, product, 5, noise=0.02), candidate_phases=["ZnFe2O4", "ZnO", "Fe2O3", "Fe3O4"])
    wire = characterizer.interpret("S1", "req1", "xrd", docs, 1.5)
    message = parse_message(wire)
    assert isinstance(message, Measurement), wire
    assert message.sample_id == "S1" and message.instrument == "xrd" and message.run_uids == ["0123456789abcdef"]
    values, sigma = message.values, message.uncertainties
    for name, truth in (("target_fraction", 0.7), ("impurity_fraction", 0.0)):
        assert 0 <= sigma[name] < 0.03
        assert values[name] == pytest.approx(truth, abs=max(0.01, 4 * sigma[name])), name
    assert values["phase:ZnO"] == pytest.approx(0.1, abs=0.02)
    assert values["phase:ZnO"] + values["phase:Fe2O3"] == pytest.approx(0.3, abs=0.02)
    assert set(values) == {"target_fraction", "impurity_fraction", "phase:ZnFe2O4", "phase:ZnO", "phase:Fe2O3",
                           "phase:Fe3O4"}  # the campaign's outputs, and every candidate


def test_characterizer_faults_on_bad_patterns(world, characterizer):
    tt, y = noisy(world, mixture({"ZnFe2O4": 1.0}), 1)
    y_nan = y.copy()
    y_nan[17] = math.nan
    cases = [
        (documents(tt, y_nan, candidate_phases=["ZnFe2O4"]), "non-finite intensity"),
        (documents([], [], candidate_phases=["ZnFe2O4"]), "empty pattern"),
        (documents(tt, y, candidate_phases=["MgAl2O4", "MgO", "Al2O3"]), "unexplained"),  # the wrong sample
        (documents(tt, y), "no target phase"),
    ]
    for docs, message in cases:
        fault = parse_message(characterizer.interpret("S1", "req1", "xrd", docs, 1.0))
        assert isinstance(fault, Fault) and fault.step == "characterize", fault
        assert message in fault.error and "\n" not in fault.error and "run 01234567" in fault.error


def test_scalar_channels_are_read_as_before(characterizer):
    docs = [("start", {"uid": "u1", "channels": {"target_fraction": "target_fraction",
                                                 "impurity_fraction": "impurity_fraction"}}),
            ("event", {"data": {"target_fraction": 0.8, "impurity_fraction": 0.01}})]
    message = parse_message(characterizer.interpret("S1", "req1", "xrd", docs, 1.0))
    assert isinstance(message, Measurement)
    assert message.values == {"target_fraction": 0.8, "impurity_fraction": 0.01}
    assert message.uncertainties["target_fraction"] == pytest.approx(0.8 * 0.02)


def _library_has(*names):
    from athanor.simulators import phases as lib

    return pytest.mark.skipif(not all(n in lib.PHASES for n in names), reason=f"library lacks {names}")


@_library_has("Zn(NO3)2·6H2O", "Fe(NO3)3·9H2O")
def test_an_amorphous_precursor_is_quantified_by_its_halo():
    w = SolidStateWorld(target="ZnFe2O4", precursors=["Zn(NO3)2·6H2O", "Fe(NO3)3·9H2O"])
    product = w.synthesize({"inputs": {"temperature_c": 300, "time_h": 1}}, "S0001:synthesis")
    assert product["phases"]["Zn(NO3)2·6H2O"] > 0.3  # not yet decomposed: XRD-amorphous
    fit = identify_phases(*noisy(w, product, 2, noise=0.03),
                          ["ZnFe2O4", "Zn(NO3)2·6H2O", "Fe(NO3)3·9H2O", "ZnO", "Fe2O3"])
    for phase, found in fit.weight_fractions.items():
        truth = product["phases"].get(phase, 0.0)
        assert found == pytest.approx(truth, abs=max(0.03, 4 * fit.uncertainties[phase])), phase
    assert fit.crystallite_nm["Zn(NO3)2·6H2O"] is None


@_library_has("ZnCO3")
def test_characterizer_counts_precursors_and_their_oxides_as_the_world_does(characterizer):
    w = SolidStateWorld(target="ZnFe2O4", precursors=["ZnCO3", "Fe2O3"])
    product = w.synthesize({"inputs": {"temperature_c": 800, "time_h": 2}}, "S0001:synthesis")
    truth = w._summary(product["phases"], product)
    assert 0.1 < truth["precursor_fraction"] < 0.9
    # Candidates in the device's order (target, precursors, decomposition products, side phases), roles unsaid.
    docs = documents(*noisy(w, product, 4, noise=0.02),
                     candidate_phases=["ZnFe2O4", "ZnCO3", "Fe2O3", "ZnO", "Fe3O4"])
    message = parse_message(characterizer.interpret("S1", "req1", "xrd", docs, 1.0))
    assert isinstance(message, Measurement), message
    for name in ("target_fraction", "impurity_fraction"):
        assert message.values[name] == pytest.approx(truth[name], abs=max(0.01, 4 * message.uncertainties[name]))
    unreacted = sum(message.values[f"phase:{p}"] for p in ("ZnCO3", "Fe2O3", "ZnO"))
    assert unreacted == pytest.approx(truth["precursor_fraction"], abs=0.02)
