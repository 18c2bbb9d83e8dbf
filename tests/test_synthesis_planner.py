"""Solid-state route planner: precursor library, balanced reactions, masses, heating, learning from failure."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from pymatgen.core import Composition

from athanor.errors import AthanorError
from athanor.planners.precursors import DEFAULT_PATH, HAZARD_FLAGS, load_library
from athanor.planners.synthesis import (HAZARD_WEIGHTS, RouteMemory, SolidStateRoute, balance, plan_report,
                                        rank_routes)

ROOT = Path(__file__).resolve().parents[1]
GASES = {"CO2", "H2O", "O2", "NO2", "N2"}
TARGETS = ["BaTiO3", "LiCoO2", "SrTiO3", "MgAl2O4", "ZnFe2O4", "CaTiO3", "LaFeO3", "LaMnO3", "Y3Al5O12",
           "NiFe2O4", "Li4Ti5O12", "BaZrO3", "Mg2SiO4"]


def comp(formula: str) -> Composition:
    """Independent of the planner's parser: 'Fe(NO3)3·9H2O' → Fe(NO3)3(H2O)9."""
    head, *hydrate = formula.split("·")
    for part in hydrate:
        n, body = re.match(r"(\d*)(.*)", part).groups()
        head += f"({body}){n or 1}"
    return Composition(head)


def amounts(formula: str, mol: float = 1.0) -> dict[str, float]:
    return {str(e): mol * n for e, n in comp(formula).items()}


@pytest.fixture(scope="module")
def library():
    return load_library()


# --- the library ------------------------------------------------------------------------------------------


def test_library_validates_and_covers_the_demo_and_test_targets(library):
    assert 40 <= len(library.precursors) <= 80
    kinds = {p.kind for p in library.precursors.values()}
    assert kinds == {"oxide", "carbonate", "nitrate", "hydroxide", "metal"}
    for needed in ["MgO", "Al2O3", "ZnO", "Fe2O3", "MgCO3", "ZnCO3", "Mg(OH)2", "Al(OH)3", "Fe(NO3)3·9H2O",
                   "Zn(NO3)2·6H2O", "BaCO3", "TiO2", "Li2CO3", "Co3O4", "SrCO3", "La2O3", "Y2O3", "ZrO2", "NiO"]:
        assert needed in library.precursors, needed
    assert set(HAZARD_WEIGHTS) == set(HAZARD_FLAGS)
    for p in library.precursors.values():
        assert p.cost_usd_per_kg > 0
        assert p.dfh_kj_mol is None or p.dfh_source in library.sources
        assert library.refractory(p.formula).melts_c is not None
    assert library.target_enthalpy("BaTiO3")[0] == pytest.approx(-1659.8)
    # MgAl2O4 from the oxides plus the measured enthalpy of the oxide reaction
    assert library.target_enthalpy("MgAl2O4")[0] == pytest.approx(-601.6 - 1675.7 - 23.6)


def _broken(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "precursors.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["precursors"][2].update(cost_usd_per_kg=-5), r"entry 3 \(SrO\): cost_usd_per_kg: .*greater than 0"),
    (lambda d: d["precursors"][3].update(hazards=["explosive"]), r"entry 4 \(BaO\): hazards\.0: "),
    (lambda d: d["precursors"][0].update(formula="MgQ"), r"entry 1 \(MgQ\): formula: unknown element 'Q'"),
    (lambda d: d["precursors"][5].update(oxide="Xx2O3"), r"entry 6 \(Al2O3\): oxide 'Xx2O3' is not a library entry"),
    (lambda d: d["precursors"][1].update(dfh_source="nowhere"), r"entry 2 \(CaO\): unknown source 'nowhere'"),
    (lambda d: d["precursors"].append({"formula": "BaCO3", "kind": "carbonate", "oxide": "BaO",
                                       "cost_usd_per_kg": 1}), r"entry \d+ \(BaCO3\): duplicate of BaCO3"),
])
def test_a_malformed_entry_is_reported_with_its_place(tmp_path, edit, expected):
    path = _broken(tmp_path, edit)
    with pytest.raises(AthanorError) as info:
        load_library(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert re.search(expected, message), message
    assert "\n" not in message


# --- balanced reactions and masses ------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_top_route_conserves_every_element_and_releases_only_gases(target):
    recipe = plan_report(target, batch_g=7.5, top=1)[0]
    assert recipe["target"] == target and recipe["route"] == "solid_state"
    n_target = 7.5 / comp(target).weight
    supplied: dict[str, float] = {}
    for p in recipe["precursors"]:
        assert p["mass_g"] > 0 and p["mol"] == pytest.approx(p["mass_g"] / comp(p["formula"]).weight, rel=1e-12)
        for e, n in amounts(p["formula"], p["mass_g"] / comp(p["formula"]).weight).items():
            supplied[e] = supplied.get(e, 0.0) + n
    byproducts = recipe["details"]["byproducts"]
    assert set(byproducts) <= GASES
    released = {}
    for gas, nu in byproducts.items():
        for e, n in amounts(gas, nu * n_target).items():
            released[e] = released.get(e, 0.0) + n
    for e, n in amounts(target, n_target).items():
        if e != "O":
            assert supplied[e] == pytest.approx(n, rel=1e-9), e
    o2_in = recipe["details"]["o2_taken_up"] * n_target * 2
    for e in set(supplied) | set(released):  # O, C, H, N balance with the gases and the O2 taken up
        out = amounts(target, n_target).get(e, 0.0) + released.get(e, 0.0)
        assert supplied.get(e, 0.0) + (o2_in if e == "O" else 0.0) == pytest.approx(out, rel=1e-9), e
    assert "->" in recipe["reaction"] and target in recipe["reaction"].split("->")[1]


def test_named_routes_balance_as_in_the_textbooks():
    bto = plan_report("BaTiO3", top=3)
    assert bto[0]["reaction"] == "BaCO3 + TiO2 -> BaTiO3 + CO2"
    assert bto[0]["details"]["byproducts"] == {"CO2": 1.0}
    lco = balance("LiCoO2", ["Li2CO3", "Co3O4"])
    assert lco.nu == pytest.approx({"Li2CO3": 0.5, "Co3O4": 1 / 3}, rel=1e-12)
    assert lco.gases == pytest.approx({"CO2": 0.5, "O2": -1 / 12}, rel=1e-12)  # O2 taken up
    assert lco.equation() == "6 Li2CO3 + 4 Co3O4 + O2 -> 12 LiCoO2 + 6 CO2"
    assert any(set(o.balanced.precursors) == {"Li2CO3", "Co3O4"} for o in rank_routes("LiCoO2"))
    spinel = balance("MgAl2O4", ["MgCO3", "Al(OH)3"])
    assert spinel.gases == pytest.approx({"CO2": 1.0, "H2O": 3.0})
    nitrate = balance("ZnFe2O4", ["Zn(NO3)2·6H2O", "Fe(NO3)3·9H2O"])
    assert nitrate.gases == pytest.approx({"NO2": 8.0, "O2": 2.0, "H2O": 24.0})
    assert balance("LaMnO3", ["La2O3", "MnO2"]).gases == pytest.approx({"O2": 0.25})
    assert balance("BaTiO3", ["BaCO3", "ZrO2"]) is None  # cannot make it


def test_routes_are_ranked_with_a_breakdown(library):
    options = rank_routes("BaTiO3", library)
    scores = [o.score for o in options]
    assert scores == sorted(scores, reverse=True) and len(options) >= 4
    for o in options:
        assert sum(o.breakdown.values()) == pytest.approx(o.score, abs=1e-3)
    by_set = {o.balanced.precursors: o for o in options}
    assert by_set[("BaCO3", "TiO2")].score > by_set[("Ba(NO3)2", "TiO2")].score  # NOx and an oxidizer
    assert by_set[("Ba(NO3)2", "TiO2")].breakdown["nox_fumes"] < 0
    assert by_set[("BaCO3", "Ti")].breakdown["metal_oxidation"] < 0
    assert by_set[("BaCO3", "TiO2")].energy["dH_kj_per_mol"] == pytest.approx(
        -1659.8 - 393.51 + 1216.3 + 944.0, abs=1e-3)
    unknown = rank_routes("LaFeO3", library)  # no tabulated ΔfH: estimated from La2O3 + Fe2O3
    assert unknown[0].energy["basis"].startswith("estimated")


# --- heating ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["BaTiO3", "LiCoO2", "MgAl2O4", "ZnFe2O4", "Li4Ti5O12", "Y3Al5O12", "LaMnO3"])
def test_heating_profile_is_in_range_and_below_the_melting_points(library, target):
    for recipe in plan_report(target, top=4):
        heats = [s for s in recipe["steps"] if s["action"] == "heat"]
        doses = [s for s in recipe["steps"] if s["action"] == "dose"]
        assert recipe["steps"][: len(doses)] == doses and len(doses) == len(recipe["precursors"])
        assert [d["mass_g"] for d in doses] == [p["mass_g"] for p in recipe["precursors"]]
        dwell = heats[-1]
        assert 600 <= dwell["temperature_c"] <= 1500 and dwell["time_h"] > 0 and dwell["ramp_c_per_min"] == 5.0
        assert dwell["atmosphere"] in {"air", "N2"}
        heating = recipe["details"]["heating"]
        for phase, t_tamman in heating["tamman_c"].items():  # what the precursors are at the dwell
            melts = library.precursors[phase].melts_c
            assert t_tamman == pytest.approx(2 / 3 * (melts + 273.15) - 273.15, abs=0.1)
            assert dwell["temperature_c"] < melts
        assert dwell["temperature_c"] >= min(heating["tamman_c"].values())
        for p in recipe["precursors"]:
            entry = library.precursors[p["formula"]]
            if entry.kind == "oxide" and entry.oxide is None:
                assert dwell["temperature_c"] < entry.melts_c
            if entry.max_dwell_c is not None:
                assert dwell["temperature_c"] <= entry.max_dwell_c
            if len(heats) == 2 and entry.melts_c and entry.melts_c >= 350 and entry.oxide \
                    and entry.melts_c < (entry.decomposes_c or 1e9):
                assert heats[0]["temperature_c"] < entry.melts_c  # calcined before it would melt
        if len(heats) == 2:
            assert 300 <= heats[0]["temperature_c"] <= dwell["temperature_c"] - 100
    assert plan_report("LiCoO2", top=1)[0]["steps"][-1]["temperature_c"] <= 900  # lithium loss


def test_reduction_needs_inert_gas_and_campaign_inputs_override_the_rule():
    reduced = SolidStateRoute("LaMnO3", precursors=["La2O3", "MnO2"]).plan({})
    assert reduced["steps"][-1]["atmosphere"] == "N2"
    route = SolidStateRoute("ZnFe2O4", precursors=["ZnO", "Fe2O3"])
    rule = route.plan({})
    assert rule["reaction"] == "ZnO + Fe2O3 -> ZnFe2O4" and rule["steps"][-1]["atmosphere"] == "air"
    designed = route.plan({"temperature_c": 950, "time_h": 3, "atmosphere": "O2", "ramp_c_per_min": 10})
    assert designed["steps"][-1] | {"purpose": None} == {
        "action": "heat", "temperature_c": 950.0, "time_h": 3.0, "atmosphere": "O2", "ramp_c_per_min": 10.0,
        "purpose": None}
    assert designed["steps"][-1]["temperature_c"] != rule["steps"][-1]["temperature_c"]
    ratio = route.plan({"Zn": 0.3, "Fe": 0.7, "temperature_c": 1000})  # the designed cation ratio
    mol = {p["formula"]: p["mol"] for p in ratio["precursors"]}
    assert mol["ZnO"] / (2 * mol["Fe2O3"]) == pytest.approx(0.3 / 0.7, rel=1e-9)


# --- learning from failure ---------------------------------------------------------------------------------


def _heat(recipe):
    return recipe["steps"][-1]["temperature_c"]


def test_a_failed_synthesis_leads_to_another_route_next_time():
    route = SolidStateRoute("BaTiO3")
    first = route.plan({})
    assert first["details"]["memory"]["penalty"] == 0
    route.record(first, target_fraction=0.9)  # a success changes nothing
    assert route.plan({})["precursors"] == first["precursors"]
    route.record(first, target_fraction=0.1)  # cause unknown: try the next route
    second = route.plan({})
    assert {p["formula"] for p in second["precursors"]} != {p["formula"] for p in first["precursors"]}
    assert second["details"]["memory"]["penalty"] == 0
    route.record(second, target_fraction=0.2, precursor_fraction=0.1, impurity_fraction=0.7)  # impurities
    third = route.plan({})
    assert {p["formula"] for p in third["precursors"]} not in (
        {p["formula"] for p in first["precursors"]}, {p["formula"] for p in second["precursors"]})
    # the memory is a plain list: rebuilt after a restart it plans the same
    history = json.loads(json.dumps(route.memory.to_list()))
    again = SolidStateRoute("BaTiO3", memory=RouteMemory.from_history(history)).plan({})
    assert again["reaction"] == third["reaction"] and _heat(again) == _heat(third)


def test_an_incomplete_reaction_is_fired_hotter_and_a_designed_temperature_switches_route():
    route = SolidStateRoute("ZnFe2O4", precursors=["ZnO", "Fe2O3", "ZnCO3"])
    first = route.plan({})
    route.record(first, target_fraction=0.3, precursor_fraction=0.6, impurity_fraction=0.1)
    hotter = route.plan({})
    assert hotter["reaction"] == first["reaction"] and _heat(hotter) > _heat(first)
    assert hotter["details"]["memory"]["temperature_raised_c"] > 0
    # with the campaign fixing the temperature, only the precursor set can change
    designed = SolidStateRoute("ZnFe2O4", precursors=["ZnO", "Fe2O3", "ZnCO3"])
    one = designed.plan({"temperature_c": 900})
    designed.record(one, target_fraction=0.05)
    two = designed.plan({"temperature_c": 900})
    assert two["reaction"] != one["reaction"] and _heat(two) == 900


def test_the_store_history_the_conductor_passes_steers_the_plan_without_mutating_the_route():
    route = SolidStateRoute("BaTiO3")
    first = route.plan({})
    logged = [{"sample_id": "S0001", "state": "learned", "recipe": first, "values": {"target_fraction": 0.05}},
              {"sample_id": "S0002", "state": "failed", "recipe": first, "values": {}}]  # no outcome: ignored
    second = route.plan({}, None, logged)
    assert second["reaction"] != first["reaction"]
    assert route.memory.to_list() == [] and route.plan({})["reaction"] == first["reaction"]


def test_the_memory_rejects_bad_history():
    with pytest.raises(AthanorError, match=r"item 1: .*temperature_c"):
        RouteMemory.from_history([{"target": "BaTiO3", "precursors": ["BaCO3", "TiO2"], "temperature_c": "hot",
                                   "target_fraction": 0.1}])
    with pytest.raises(AthanorError, match="no heating temperature"):
        SolidStateRoute("BaTiO3").record({"precursors": [{"formula": "BaO"}], "steps": []}, 0.1)


# --- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: plan_report("BaQO3"), r"unknown element 'Q'"),
    (lambda: plan_report("Xx2O3"), r"unknown element 'Xx'"),
    (lambda: plan_report("PuO2"), r"no library precursor supplies Pu"),
    (lambda: plan_report("Li2CO3"), r"contains C"),
    (lambda: plan_report("BaTiO3", batch_g=0), r"batch mass \(g\) must be a positive number"),
    (lambda: SolidStateRoute("BaTiO3", batch_g=-2.0), r"batch mass \(g\) must be a positive number"),
    (lambda: plan_report("BaTiO3", top=0), r"top must be a positive integer"),
    (lambda: SolidStateRoute().plan({}), r"no target"),
    (lambda: SolidStateRoute("BaTiO3", precursors=["BaCO3", "Unobtainium"]), r"'Unobtainium' is not in the library"),
    (lambda: SolidStateRoute("BaTiO3").plan({"atmosphere": "vacuum"}), r"atmosphere must be one of"),
])
def test_bad_input_gives_one_line_athanor_error(call, message):
    with pytest.raises(AthanorError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_plan_report_is_json_and_planners_know_nothing_of_worlds():
    report = plan_report("SrTiO3", batch_g=2.0, top=3)
    assert len(report) == 3 and [r["details"]["rank"] for r in report] == [1, 2, 3]
    assert json.loads(json.dumps(report)) == report
    assert [r["score"] for r in report] == sorted((r["score"] for r in report), reverse=True)
    for name in ("synthesis.py", "reactions.py", "precursors.py"):
        tree = ast.parse((ROOT / "planners" / name).read_text(encoding="utf-8"))
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any("simulators" in m or m.split(".")[0] == "ray" for m in imported), imported


def test_plan_cli_prints_ranked_recipes_and_one_line_errors(capsys):
    from athanor.cli import main

    assert main(["plan", "BaTiO3", "--batch-g", "2", "--top", "2"]) == 0
    recipes = json.loads(capsys.readouterr().out)
    assert len(recipes) == 2 and recipes[0]["score"] >= recipes[1]["score"]
    assert "CO2" in recipes[0]["reaction"] and all(p["mass_g"] > 0 for p in recipes[0]["precursors"])
    assert main(["plan", "BaXx3"]) == 2
    assert main(["plan", "BaTiO3", "--batch-g", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("athanor: error:") for line in err)
