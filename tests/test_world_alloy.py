"""The alloy world's rigid-band model: the Slater–Pauling curve, experiment, and implicit gradients
(the CPA model, the default, is tested in test_cpa.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition

from athanor.cli import main
from athanor.errors import AthanorError
from athanor.simulators.alloy import AlloyWorld
from athanor.simulators.stoner import ELEMENTS, slater_koster_dd
from conftest import ROOT

MOMENTS = ROOT / "data" / "alloys" / "moments.csv"
ERROR_BOUND = 0.15  # μB per atom, every row of the experimental table
RMS_BOUND = 0.10


@pytest.fixture(scope="module")
def world() -> AlloyWorld:
    return AlloyWorld(model="rigid_band")


def moment(world: AlloyWorld, **composition: float) -> float:
    return world.evaluate(composition, {})["magnetic_moment"]


def test_slater_koster_blocks_have_the_bond_eigenvalues():
    # Rotated into any bond frame, a d–d hopping block has eigenvalues σ, π, π, δ, δ.
    directions = np.random.default_rng(1).normal(size=(20, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    blocks = slater_koster_dd(*directions.T, -6.0, 4.0, -1.0)
    assert np.allclose(np.linalg.eigvalsh(blocks), [-6.0, -1.0, -1.0, 4.0, 4.0], atol=1e-12)


def test_pure_elements(world):
    fe, co, ni = (world.evaluate({e: 1.0}, {}) for e in ("Fe", "Co", "Ni"))
    assert 2.0 <= fe["magnetic_moment"] <= 2.35 and fe["structure"] == "bcc"
    assert 1.5 <= co["magnetic_moment"] <= 1.85 and co["structure"] == "fcc"
    assert 0.5 <= ni["magnetic_moment"] <= 0.75 and ni["structure"] == "fcc"


def test_slater_pauling_peak_on_the_iron_cobalt_line(world):
    cobalt = np.linspace(0.0, 1.0, 41)
    states = [world.evaluate({"Fe": 1 - x, "Co": x}, {}) for x in cobalt]
    moments = np.array([s["magnetic_moment"] for s in states])
    peak = int(np.argmax(moments))
    assert 0 < peak < len(cobalt) - 1  # a maximum inside the line, not at an end
    assert 26.0 <= states[peak]["average_atomic_number"] <= 26.6
    assert 2.3 <= moments[peak] <= 2.6
    assert states[peak]["structure"] == "bcc"


def test_slope_on_the_cobalt_nickel_side_is_minus_one_per_electron(world):
    nickel = np.linspace(0.1, 0.9, 9)
    electrons = 9 + nickel
    moments = [moment(world, Co=1 - x, Ni=x) for x in nickel]
    slope = np.polyfit(electrons, moments, 1)[0]
    assert -1.15 <= slope <= -0.85


def test_against_experimental_moments(world):
    table = pd.read_csv(MOMENTS)
    assert len(table) >= 10 and table["source"].str.len().min() > 10
    # The rigid band is built for the Slater–Pauling main line; Cr, Mn and Cu alloys are the CPA's,
    # and it has no Invar collapse (Fe65Ni35 comes out 0.27 μB high).
    table = table[~table.alloy.str.contains("Cr|Mn|Cu") & (table.alloy != "Fe65Ni35")]
    errors = []
    for _, row in table.iterrows():
        amounts = {str(k): v for k, v in Composition(row.alloy).get_el_amt_dict().items()}
        errors.append(world.evaluate(amounts, {})["magnetic_moment"] - row.moment_muB)
    errors = np.array(errors)
    assert np.abs(errors).max() <= ERROR_BOUND, dict(zip(table.alloy, errors.round(3)))
    assert np.sqrt(np.mean(errors**2)) <= RMS_BOUND


@pytest.mark.parametrize("composition", [
    {"Fe": 0.7, "Co": 0.3},
    {"Fe": 0.5, "Co": 0.2, "Ni": 0.2, "Cr": 0.1},
    {"Co": 0.45, "Ni": 0.45, "Cu": 0.1},
])
def test_gradients_match_finite_differences(world, composition):
    value, gradient = world.moment_and_gradient(composition)
    assert value == pytest.approx(moment(world, **composition), abs=1e-12)
    h = 1e-6
    for element in ELEMENTS:
        up, down = dict(composition), dict(composition)
        up[element] = up.get(element, 0.0) + h
        if composition.get(element, 0.0) > h:
            down[element] -= h
            fd = (moment(world, **up) - moment(world, **down)) / (2 * h)
        else:  # at the edge of the simplex: one-sided
            fd = (moment(world, **up) - value) / h
        # The world renormalizes, so both sides see the same projected derivative.
        total = sum(composition.values())
        assert gradient[element] * total == pytest.approx(fd * total, abs=1e-4), element


def test_structure_can_be_forced_and_is_checked(world):
    assert world.evaluate({"Ni": 1.0}, {"structure": "bcc"})["structure"] == "bcc"
    with pytest.raises(AthanorError, match="structure"):
        world.evaluate({"Ni": 1.0}, {"structure": "hcp"})


@pytest.mark.parametrize("composition, message", [
    ({"Fe": 0.5, "Al": 0.5}, "not Al"),
    ({"Fe": -0.1, "Co": 1.0}, "negative"),
    ({"Fe": 0.0}, "empty"),
    ({"Fe": float("nan")}, "negative or missing"),
])
def test_bad_compositions_are_named(world, composition, message):
    with pytest.raises(AthanorError, match=message):
        world.evaluate(composition, {})


def test_world_eval_cli_prints_one_json_object(capsys):
    assert main(["world", "eval", "alloy", "--composition", "Fe70Co30"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["world"] == "alloy"
    assert 2.3 <= result["magnetic_moment"] <= 2.6
    assert result["average_atomic_number"] == pytest.approx(26.3)


def test_world_eval_cli_errors_are_one_line(capsys):
    assert main(["world", "eval", "alloy", "--composition", "FeAl"]) == 2
    assert main(["world", "eval", "alloy", "--composition", "Fe", "--set", "structure"]) == 2
    assert main(["world", "eval", "replay", "--composition", "Fe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("athanor: error:") for line in err)


def test_differentiable_model_batches_and_agrees_with_the_world(world):
    import torch

    model = world.differentiable_model(["Fe", "Co", "Ni"])
    X = torch.tensor([[0.7, 0.3, 0.0], [0.4, 0.3, 0.3]], dtype=torch.double, requires_grad=True)
    moments = model(X)["magnetic_moment"]
    assert moments.shape == (2,)
    assert float(moments[0]) == pytest.approx(moment(world, Fe=0.7, Co=0.3), abs=1e-12)
    moments.sum().backward()
    _, gradient = world.moment_and_gradient({"Fe": 0.4, "Co": 0.3, "Ni": 0.3})
    assert X.grad[1].tolist() == pytest.approx([gradient["Fe"], gradient["Co"], gradient["Ni"]], abs=1e-9)
    with pytest.raises(AthanorError, match="not Al"):
        world.differentiable_model(["Fe", "Al"])
