"""The perovskite world: CHGNet lattice parameters, tolerance factor, errors, cache and CLI.

CHGNet results go to a temporary cache shared by the module (one relaxation per compound). The
lattice bound: CHGNet (PBE-like) overestimates lattice parameters; on the benchmark's 15 compounds
(benchmarks/results/perovskite_lattice.md) the errors are +0.6 to +2.6 % (halides and tilted
oxides largest); the three oxides tested here measure +0.8 to +1.4 %, and must stay within 2 %.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from athanor import cli
from athanor.errors import AthanorError
from athanor.registry import make_world
from athanor.spec import load_campaign, parse_campaign
from athanor.simulators import chgnet_cache
from athanor.simulators.perovskite import PerovskiteWorld, resolve

LATTICE_BOUND_PCT = 2.0
EXPERIMENT = {"SrTiO3": 3.905, "BaTiO3": 4.007, "BaZrO3": 4.193}  # data/perovskites/cubic_lattice.csv
ROOT = Path(__file__).resolve().parents[1]
FORMULAS = {"SrTiO3": {"Sr": 1, "Ti": 1, "O": 3}, "BaTiO3": {"Ba": 1, "Ti": 1, "O": 3},
            "BaZrO3": {"Ba": 1, "Zr": 1, "O": 3}}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("perovskite_cache"))


@pytest.fixture(scope="module")
def truth(cache_dir):
    world = PerovskiteWorld(cache_dir=cache_dir)
    return {name: world.evaluate(formula, {}) for name, formula in FORMULAS.items()}


def test_building_the_world_does_not_load_chgnet():
    loads = chgnet_cache.calls["load"]
    world = PerovskiteWorld(b_site="Ti", outputs=["lattice_a"])
    assert world.outputs == ["lattice_a"] and chgnet_cache.calls["load"] == loads
    with pytest.raises(AthanorError, match="unknown option"):
        PerovskiteWorld.from_options({"bsite": "Ti"})
    with pytest.raises(AthanorError, match="anion: 'N' is not supported"):
        PerovskiteWorld(anion="N")


@pytest.mark.parametrize("name", list(FORMULAS))
def test_lattice_parameter_within_bound(truth, name):
    error = 100 * (truth[name]["lattice_a"] - EXPERIMENT[name]) / EXPERIMENT[name]
    assert abs(error) <= LATTICE_BOUND_PCT, f"{name}: {truth[name]['lattice_a']:.3f} Å, {error:+.2f} %"
    assert truth[name]["cell"]["atoms"] == 5


def test_srtio3_tolerance_factor_and_stability(truth):
    r_sr, r_ti, r_o = 1.44, 0.605, 1.40  # Shannon: Sr2+ CN XII, Ti4+ CN VI, O2- CN VI
    expected = (r_sr + r_o) / (math.sqrt(2) * (r_ti + r_o))
    result = truth["SrTiO3"]
    assert result["tolerance_factor"] == pytest.approx(expected, abs=1e-9)
    assert 1.00 <= result["tolerance_factor"] <= 1.01
    assert result["oxidation_states"] == {"Sr": 2, "Ti": 4}
    assert set(result["binaries"]) == {"SrO", "TiO2"}
    assert result["binaries"]["SrO"]["prototype"] == "rocksalt" and result["binaries"]["TiO2"]["prototype"] == "rutile"
    assert result["reaction_energy"] < 0  # SrTiO3 is stable against SrO + TiO2
    assert -9.0 < result["energy_per_atom"] < -8.0


@pytest.mark.parametrize("formula, message", [
    ({"K": 1, "Ti": 1, "O": 3}, "charge neutrality is impossible"),
    ({"Fe": 2, "O": 3}, "not an ABX3 perovskite"),
    ({"Sr": 1, "Ti": 2, "O": 5}, "not an ABX3 perovskite"),
    ({"Sr": 1, "Ti": 1, "O": 2, "Cl": 1}, "mixed anions"),
])
def test_bad_compositions_raise_athanor_error(formula, message, tmp_path):
    with pytest.raises(AthanorError, match=message):
        PerovskiteWorld(cache_dir=str(tmp_path)).evaluate(formula, {})


def test_campaign_composition_is_the_a_site_rounded_to_eighths():
    site = resolve({"Sr": 0.3, "Ba": 0.6, "Ca": 0.1}, None, "Ti", "O", 8)
    assert site["counts_A"] == {"Ba": 5, "Sr": 2, "Ca": 1} and site["counts_B"] == {"Ti": 8}
    assert site["oxidation_states"] == {"Ba": 2, "Sr": 2, "Ca": 2, "Ti": 4}
    trace = resolve({"Sr": 0.74, "Ba": 0.23, "Ca": 0.03}, None, "Ti", "O", 8)  # Ca rounds away
    assert trace["counts_A"] == {"Sr": 6, "Ba": 2} and trace["A"] == {"Sr": 0.75, "Ba": 0.25}
    split = resolve({"K": 1, "Nb": 1, "O": 3}, None, None, "O", 8)  # the larger cation goes to A
    assert split["A"] == {"K": 1.0} and split["B"] == {"Nb": 1.0}


def test_settings_override_options(monkeypatch, tmp_path):
    monkeypatch.setattr(PerovskiteWorld, "_compute", lambda self, site, n: {
        "lattice_a": 0.0, "energy_per_atom": 0.0, "reaction_energy": 0.0, "binaries": {}, "cell": {"supercell": n}})
    world = PerovskiteWorld(b_site="Ti", cache_dir=str(tmp_path))
    result = world.evaluate({"Sr": 0.5, "Ca": 0.5}, {"b_site": "Zr"})
    assert result["simulated"] == "Ca0.5Sr0.5ZrO3" and result["cell"] == {"supercell": 2}
    trace = world.evaluate({"Sr": 0.97, "Ca": 0.03}, {})  # Ca rounds away: every output is for SrTiO3
    assert trace["simulated"] == "SrTiO3" and trace["cell"] == {"supercell": 1}
    assert trace["tolerance_factor"] == pytest.approx(1.0016, abs=1e-4)
    with pytest.raises(AthanorError, match="unknown setting"):
        world.evaluate({"Sr": 1.0}, {"temperature": 300})


def test_cache_hit_makes_no_chgnet_call(truth, cache_dir, monkeypatch):
    chgnet_cache.clear_memory()  # read from disk, as a new process would

    def forbidden(*args, **kwargs):
        raise AssertionError("CHGNet called on a cache hit")

    monkeypatch.setattr(chgnet_cache, "relax", forbidden)
    monkeypatch.setattr(chgnet_cache, "optimizer", forbidden)
    world = PerovskiteWorld(cache_dir=cache_dir, outputs=["lattice_a", "reaction_energy"])
    assert world.evaluate(FORMULAS["SrTiO3"], {}) == truth["SrTiO3"]
    product = world.synthesize({"inputs": {"Sr": 1.0, "Ti": 1.0, "O": 3.0}}, "S0001:synthesis")
    measured = world.measure(product, "probe", "S0001:characterization")
    assert measured == {key: truth["SrTiO3"][key] for key in ("lattice_a", "reaction_energy")}


def test_cli_world_eval_prints_one_json_object(truth, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("ATHANOR_CACHE", cache_dir)  # the CLI's world uses the default cache folder
    assert cli.main(["world", "eval", "perovskite", "--composition", "SrTiO3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    printed = json.loads(out[0])
    assert printed["world"] == "perovskite" and printed["composition"] == "Sr1Ti1O3"
    for key in ("lattice_a", "tolerance_factor", "energy_per_atom", "reaction_energy"):
        assert printed[key] == pytest.approx(truth["SrTiO3"][key])
    assert cli.main(["world", "eval", "perovskite", "--composition", "KTiO3"]) == 2
    captured = capsys.readouterr()
    assert "charge neutrality is impossible" in captured.err and "Traceback" not in captured.err


@pytest.mark.slow
def test_mixed_a_site_lies_between_its_end_members(truth, cache_dir):
    result = PerovskiteWorld(cache_dir=cache_dir).evaluate({"Sr": 0.5, "Ba": 0.5, "Ti": 1, "O": 3}, {})
    assert result["simulated"] == "Ba0.5Sr0.5TiO3" and result["cell"]["atoms"] == 40
    assert truth["SrTiO3"]["lattice_a"] < result["lattice_a"] < truth["BaTiO3"]["lattice_a"]
    middle = (truth["SrTiO3"]["lattice_a"] + truth["BaTiO3"]["lattice_a"]) / 2
    assert abs(result["lattice_a"] - middle) < 0.02  # close to Vegard's law
    assert set(result["binaries"]) == {"SrO", "BaO", "TiO2"}


def test_campaign_files_build_the_world():
    spec = load_campaign(ROOT / "configs" / "perovskite_chgnet.yaml")
    world = make_world(spec)
    assert isinstance(world, PerovskiteWorld) and world.b_site == "Ti" and world.outputs == [
        "reaction_energy", "tolerance_factor"]
    template = """campaign: t
space:
  parameters: [{type: categorical, name: %s, choices: [Ti, Zr]}]
  composition: {elements: {Sr: [0, 1], Ba: [0, 1]}}
objectives: [{name: lattice_a, direction: minimize}]
budget: {experiments: 2}
world: {kind: perovskite}
"""
    assert make_world(parse_campaign(template % "b_site")).b_site is None
    with pytest.raises(AthanorError, match="neither elements nor settings"):
        make_world(parse_campaign(template % "temperature"))
