"""The solid-state world: Bragg peaks, kinetics and thermodynamics, leftovers, seeded noise, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from athanor.cli import main
from athanor.errors import AthanorError
from athanor.simulators.base import SimulatedConditions
from athanor.simulators.solid_state import SolidStateWorld
from athanor.spec import load_campaign
from conftest import ROOT

CU_KA = 1.54184  # Å, the Kα1/Kα2 weighted mean
MASS = {"Mg": 24.305, "Al": 26.9815, "O": 15.999, "Fe": 55.845, "Zn": 65.38}  # IUPAC standard atomic weights


def bragg(d: float) -> float:
    return 2 * math.degrees(math.asin(CU_KA / (2 * d)))


def cubic_d(a: float, h: int, k: int, l: int) -> float:
    return a / math.sqrt(h * h + k * k + l * l)


def hexagonal_d(a: float, c: float, h: int, k: int, l: int) -> float:
    return 1 / math.sqrt(4 / 3 * (h * h + h * k + k * k) / a ** 2 + l * l / c ** 2)


@pytest.fixture(scope="module")
def world() -> SolidStateWorld:
    return SolidStateWorld()


def pure(phase: str) -> dict:
    return {"target": phase, "precursors": [], "phases": {phase: 1.0}, "crystallite_nm": {phase: 150.0}}


def peak_near(two_theta: np.ndarray, y: np.ndarray, expected: float, window: float = 0.5) -> tuple[float, float]:
    near = np.abs(two_theta - expected) < window
    i = np.argmax(np.where(near, y, -np.inf))
    return float(two_theta[i]), float(y[i])


@pytest.mark.parametrize("phase, d_spacing", [
    ("MgO", cubic_d(4.2112, 2, 0, 0)),            # periclase (200), ≈ 42.9°
    ("MgO", cubic_d(4.2112, 2, 2, 0)),            # periclase (220), ≈ 62.3°
    ("Al2O3", hexagonal_d(4.7602, 12.9933, 1, 0, 4)),   # corundum (104), ≈ 35.1°
    ("Al2O3", hexagonal_d(4.7602, 12.9933, 1, 1, 3)),   # corundum (113), ≈ 43.4°
    ("MgAl2O4", cubic_d(8.0831, 3, 1, 1)),        # spinel (311), ≈ 36.9°
    ("ZnO", hexagonal_d(3.2498, 5.2066, 1, 0, 1)),      # zincite (101), ≈ 36.3°
])
def test_xrd_peaks_of_known_phases_sit_at_their_bragg_angles(world, phase, d_spacing):
    two_theta, y = world.pattern(pure(phase))
    position, height = peak_near(two_theta, y, bragg(d_spacing))
    assert position == pytest.approx(bragg(d_spacing), abs=0.03)
    assert height > 0.2 * y.max()  # a real reflection, not the background


def test_structure_factors_order_the_periclase_peaks(world):
    # Rock salt: (200) is the strongest line; (111) has F ∝ f_Mg − f_O and is weak.
    two_theta, y = world.pattern(pure("MgO"))
    i111 = peak_near(two_theta, y, bragg(cubic_d(4.2112, 1, 1, 1)))[1]
    i200 = peak_near(two_theta, y, bragg(cubic_d(4.2112, 2, 0, 0)))[1]
    i220 = peak_near(two_theta, y, bragg(cubic_d(4.2112, 2, 2, 0)))[1]
    assert i200 == pytest.approx(y.max()) and i200 > i220 > i111
    assert i111 < 0.25 * i200


def test_smaller_crystallites_broaden_the_peaks(world):
    widths = []
    for size in (150.0, 10.0):
        two_theta, y = world.pattern({**pure("MgO"), "crystallite_nm": {"MgO": size}})
        near = np.abs(two_theta - bragg(cubic_d(4.2112, 2, 0, 0))) < 2
        half = y[near] > (y[near].max() + y[near].min()) / 2
        widths.append(half.sum() * 0.02)
    assert widths[1] > 3 * widths[0]


def test_target_fraction_grows_with_temperature_and_time(world):
    spinel = {"Mg": 1, "Al": 2, "O": 4}
    by_t = [world.evaluate(spinel, {"temperature_c": t, "time_h": 4})["target_fraction"]
            for t in (900, 1150, 1250, 1350)]
    assert by_t[0] < 1e-3  # too cold: the oxides stay put
    assert all(a < b for a, b in zip(by_t, by_t[1:])) and by_t[-1] > 0.9
    by_time = [world.evaluate(spinel, {"temperature_c": 1250, "time_h": h})["target_fraction"] for h in (0.5, 4, 16)]
    assert all(a < b for a, b in zip(by_time, by_time[1:]))


def test_nothing_forms_where_the_driving_force_is_positive(world):
    # Hematite → magnetite + O2 needs low pO2 at 1200 °C: uphill in air, downhill in N2.
    air = world.evaluate({"Fe": 3, "O": 4}, {"temperature_c": 1200, "time_h": 8, "atmosphere": "air"})
    n2 = world.evaluate({"Fe": 3, "O": 4}, {"temperature_c": 1200, "time_h": 8, "atmosphere": "N2"})
    assert air["driving_force_kj_per_mol"] > 0 and air["target_fraction"] == 0.0
    assert n2["driving_force_kj_per_mol"] < 0 and n2["target_fraction"] > 0.5
    assert air["reaction"] == "1.5 Fe2O3 -> Fe3O4 + 0.25 O2"


def test_off_stoichiometric_amounts_leave_the_excess_precursor(world):
    result = world.evaluate({"Mg": 1.5, "Al": 2, "O": 4.5}, {"temperature_c": 1500, "time_h": 12})
    mgo, spinel = MASS["Mg"] + MASS["O"], MASS["Mg"] + 2 * MASS["Al"] + 4 * MASS["O"]
    assert result["target"] == "MgAl2O4"
    assert result["phases"]["MgO"] == pytest.approx(0.5 * mgo / (0.5 * mgo + spinel), abs=1e-3)
    assert result["phases"]["Al2O3"] < 1e-6
    assert sum(result["phases"].values()) == pytest.approx(1.0)


def test_iron_rich_ferrite_in_nitrogen_makes_magnetite():
    world = SolidStateWorld(target="ZnFe2O4", precursors={"ZnO": 1.0, "Fe2O3": 1.3})
    air = world.evaluate({}, {"temperature_c": 1300, "time_h": 6, "atmosphere": "air"})
    n2 = world.evaluate({}, {"temperature_c": 1300, "time_h": 6, "atmosphere": "N2"})
    assert air["phases"]["Fe2O3"] > 0.1 and air["phases"]["Fe3O4"] == 0.0
    assert n2["phases"]["Fe3O4"] > 0.1 and n2["impurity_fraction"] == pytest.approx(n2["phases"]["Fe3O4"])


def test_recipe_precursors_and_heating_steps():
    world = SolidStateWorld(target="MgAl2O4")
    recipe = {"inputs": {}, "route": "planned", "precursors": [
        {"formula": "MgO", "amount": 1.0}, {"formula": "Al2O3", "mass_g": 2 * 101.96}],
        "steps": [{"action": "calcine", "temperature_c": 1000, "time_h": 2},
                  {"action": "sinter", "temperature_c": 1400, "time_h": 6}]}
    product = world.synthesize(recipe, "S0001:synthesis")
    json.dumps(product)
    assert product["program_h"] > 8 and sum(product["phases"].values()) == pytest.approx(1.0)
    assert product["phases"]["Al2O3"] > 0.2 and product["phases"]["MgO"] < 1e-6  # 2 mol Al2O3 per MgO


def test_noiseless_xrd_analysis_recovers_the_true_fractions():
    world = SolidStateWorld(target="MgAl2O4")
    product = world.synthesize({"inputs": {"temperature_c": 1250, "time_h": 4}}, "S0001:synthesis")
    reading = world.measure(product, "probe", "S0001:characterization")
    assert 0.2 < product["phases"]["MgAl2O4"] < 0.8
    assert reading["target_fraction"] == pytest.approx(product["phases"]["MgAl2O4"], abs=1e-6)


def test_noise_is_seeded_by_the_step_key():
    world = SolidStateWorld(target="MgAl2O4", conditions=SimulatedConditions(seed=3, noise=0.02))
    product = world.synthesize({"inputs": {"temperature_c": 1250, "time_h": 4}}, "S0001:synthesis")
    rng = world.conditions.rng
    _, first = world.pattern(product, rng("S0001:characterization"))
    _, again = world.pattern(product, rng("S0001:characterization"))
    _, other = world.pattern(product, rng("S0002:characterization"))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    a = world.measure(product, "probe", "S0001:characterization")
    b = world.measure(product, "probe", "S0001:characterization")
    c = world.measure(product, "probe", "S0002:characterization")
    assert a == b and a != c
    truth = product["phases"]["MgAl2O4"]
    assert abs(a["target_fraction"] - truth) < 0.05 and abs(c["target_fraction"] - truth) < 0.05


@pytest.mark.parametrize("composition, settings, field", [
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": 1300, "time_h": -1}, "time_h"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": -300}, "temperature_c"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": 5000}, "temperature_c"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"time_h": 4}, "temperature_c"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": "hot"}, "temperature_c"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": 1300, "atmosphere": "H2"}, "atmosphere"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": 1300, "temprature_c": 1}, "temprature_c"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": 1300, "precursors": ["MgO", "Xq2O3"]}, "precursors"),
    ({"Mg": 1, "Al": 2, "O": 4}, {"temperature_c": 1300, "precursors": ["MgO"]}, "precursors"),
    ({"Cu": 1, "O": 1}, {"temperature_c": 1300}, "composition"),
])
def test_bad_input_names_the_field(world, composition, settings, field):
    with pytest.raises(AthanorError, match=field):
        world.evaluate(composition, settings)


def test_bad_options_are_caught_at_construction():
    with pytest.raises(AthanorError, match="target"):
        SolidStateWorld(target="unobtainium")
    with pytest.raises(AthanorError, match="target"):
        SolidStateWorld(target="MgO")  # a precursor, not something this library makes
    with pytest.raises(AthanorError, match="precursors"):
        SolidStateWorld(target="ZnFe2O4", precursors=["ZnO", "Al2O3"])


def test_world_eval_cli_prints_one_json_object(capsys):
    argv = ["world", "eval", "solid_state", "--composition", "MgAl2O4", "--set", "temperature_c=1400",
            "--set", "time_h=10"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["world"] == "solid_state" and result["target"] == "MgAl2O4"
    assert result["target_fraction"] > 0.95 and result["driving_force_kj_per_mol"] < 0
    assert any(abs(p["two_theta"] - bragg(cubic_d(8.0831, 3, 1, 1))) < 0.02 for p in result["target_peaks"])
    assert main(["world", "eval", "solid_state", "--composition", "MgAl2O4", "--set", "time_h=-2",
                 "--set", "temperature_c=1200"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("athanor: error:") and "time_h" in err[0]


def test_campaign_file_validates():
    spec = load_campaign(ROOT / "configs" / "solid_state_spinel.yaml")
    assert spec.world.kind == "solid_state" and spec.world.options["target"] == "ZnFe2O4"


# --- decomposing precursors -------------------------------------------------------------------------

def test_a_carbonate_route_makes_spinel_hot_and_leaves_carbonate_or_oxide_cold():
    world = SolidStateWorld(target="MgAl2O4", precursors=["MgCO3", "Al(OH)3"])
    cold = world.evaluate({}, {"temperature_c": 300, "time_h": 4})  # below MgCO3's 350 °C, above Al(OH)3's 300
    warm = world.evaluate({}, {"temperature_c": 700, "time_h": 4})  # decomposed, too cold to react
    hot = world.evaluate({}, {"temperature_c": 1350, "time_h": 8})
    assert cold["phases"]["MgCO3"] > 0.4 and cold["phases"]["Al(OH)3"] < 1e-6 and cold["phases"]["Al2O3"] > 0.5
    assert cold["target_fraction"] == 0.0 and cold["precursor_fraction"] == pytest.approx(1.0)
    assert warm["phases"]["MgCO3"] < 1e-9 and warm["phases"]["MgO"] == pytest.approx(0.2831, abs=1e-3)
    assert warm["target_fraction"] < 1e-3
    assert hot["target_fraction"] > 0.95 and hot["impurity_fraction"] == pytest.approx(0.0, abs=1e-9)


def test_masses_in_equal_masses_out_plus_the_gas_released():
    world = SolidStateWorld(target="MgAl2O4")
    recipe = {"inputs": {"temperature_c": 1200, "time_h": 2},
              "precursors": [{"formula": "MgCO3", "mass_g": 0.8431}, {"formula": "Al(OH)3", "mass_g": 1.5601}]}
    product = world.synthesize(recipe, "S0001:synthesis")
    gas = product["gas_released_g"]
    assert product["mass_in_g"] == pytest.approx(0.8431 + 1.5601)
    assert product["mass_in_g"] == pytest.approx(product["mass_out_g"] + sum(gas.values()), rel=1e-9)
    co2, h2o = 12.011 + 2 * MASS["O"], 2 * 1.008 + MASS["O"]
    mgco3, aloh3 = MASS["Mg"] + 12.011 + 3 * MASS["O"], MASS["Al"] + 3 * (MASS["O"] + 1.008)
    assert gas["CO2"] == pytest.approx(0.8431 / mgco3 * co2, rel=1e-3)  # all of it decomposed
    assert gas["H2O"] == pytest.approx(1.5601 / aloh3 * 1.5 * h2o, rel=1e-3)
    assert product["decomposition_products"] == ["Al2O3", "MgO"] and product["side_phases"] == []


def test_nitrate_hydrates_decompose_to_oxide_nitrogen_dioxide_oxygen_and_water():
    from athanor.simulators.decomposition import Decomposition

    zn = Decomposition("Zn(NO3)2·6H2O")
    assert zn.solid_products == {"ZnO": 1.0} and zn.gases == pytest.approx({"NO2": 2, "O2": 0.5, "H2O": 6})
    fe = Decomposition("Fe(NO3)3·9H2O")
    assert fe.solid_products == {"Fe2O3": 0.5} and fe.gases == pytest.approx({"NO2": 3, "O2": 0.75, "H2O": 9})
    assert zn.rate(349 + 273.15) == 0.0 < zn.rate(351 + 273.15)


def test_fresh_oxide_from_a_decomposition_reacts_faster_than_a_commercial_powder():
    settings = {"temperature_c": 1150, "time_h": 4}
    oxides = SolidStateWorld(target="MgAl2O4", precursors=["MgO", "Al2O3"]).evaluate({}, settings)
    fresh = SolidStateWorld(target="MgAl2O4", precursors=["Mg(OH)2", "Al(OH)3"]).evaluate({}, settings)
    assert fresh["target_fraction"] > 3 * oxides["target_fraction"] > 0


def test_leftover_nitrate_is_xrd_amorphous_and_leftover_carbonate_diffracts():
    world = SolidStateWorld(target="ZnFe2O4", precursors=["ZnCO3", "Fe(NO3)3·9H2O"])
    product = world.synthesize({"inputs": {"temperature_c": 200, "time_h": 1}}, "S0001:synthesis")
    assert product["phases"]["Fe(NO3)3·9H2O"] > 0.8 and product["phases"]["ZnCO3"] < 1e-6  # ZnCO3 goes at 140 °C
    assert product["amorphous"] == ["Fe(NO3)3·9H2O"]
    two_theta, halo = world.pattern(pure("Fe(NO3)3·9H2O"))
    assert np.abs(np.diff(halo, 2)).max() < 1e-3 * halo.max()  # smooth: no Bragg peaks
    two_theta, y = world.pattern(pure("MgCO3"))  # magnesite (104), d = 2.742 Å
    d104 = hexagonal_d(4.6338, 15.0192, 1, 0, 4)
    assert peak_near(two_theta, y, bragg(d104))[0] == pytest.approx(bragg(d104), abs=0.03)
    two_theta, y = world.pattern(pure("Al(OH)3"))  # gibbsite's strongest line, (002) at d = 4.85 Å
    assert two_theta[np.argmax(y)] == pytest.approx(bragg(9.736 * math.sin(math.radians(94.54)) / 2), abs=0.05)


def test_the_lab_recipe_weighs_a_batch_that_makes_the_same_product():
    world = SolidStateWorld(target="ZnFe2O4", precursors=["ZnCO3", "Fe2O3"])
    recipe = {"inputs": {"Zn": 0.34, "Fe": 0.66, "temperature_c": 900, "time_h": 3, "atmosphere": "N2"}}
    lab = world.lab_recipe(recipe)
    assert sum(d["mass_g"] for d in lab["doses"]) == pytest.approx(2.0) and lab["atmosphere"] == "N2"
    fired = world.synthesize({"inputs": {"atmosphere": lab["atmosphere"], "ramp_c_per_min": lab["ramp_c_per_min"]},
                              "precursors": lab["doses"], "steps": lab["steps"]}, "S0001:synthesis")
    direct = world.synthesize(recipe, "S0001:synthesis")
    assert fired["phases"] == pytest.approx(direct["phases"], abs=1e-9)
    # With no target named anywhere, the powders' cations say what to make.
    free = SolidStateWorld().synthesize({"inputs": {}, "precursors": lab["doses"], "steps": lab["steps"]}, "S1")
    assert free["target"] == "ZnFe2O4"
