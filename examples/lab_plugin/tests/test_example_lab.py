"""The example lab's own tests, written with Athanor's testing kit (the `athanor_campaign` and
`athanor_run` fixtures come with Athanor; nothing to import for them)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pymatgen.core import Element

from athanor.instruments.devices import check_limits, soft_device
from athanor.simulators.alloy import AlloyWorld
from athanor.testing import FaultyWorld, assert_invariants, check_campaign

pytest.importorskip("example_lab", reason="the example lab is not installed: pip install -e examples/lab_plugin")
from example_lab.arc_melter import ArcMelter  # noqa: E402
from example_lab.routes import ArcMeltRoute  # noqa: E402

CAMPAIGN = Path(__file__).resolve().parents[1] / "campaign.yaml"


def test_the_route_weighs_each_element_by_its_atomic_mass():
    recipe = ArcMeltRoute(button_g=5.0).plan({"Fe": 0.5, "Ni": 0.5}, None)
    masses = {p["formula"]: p["mass_g"] for p in recipe["precursors"]}
    fe, ni = float(Element("Fe").atomic_mass), float(Element("Ni").atomic_mass)
    assert masses == pytest.approx({"Fe": 5.0 * fe / (fe + ni), "Ni": 5.0 * ni / (fe + ni)}, abs=1e-4)
    # the arc current follows the most refractory element: iron melts at 1811 K, nickel at 1728 K
    assert recipe["steps"][0]["current_a"] == pytest.approx(0.18 * 1811, abs=0.1)
    with pytest.raises(ValueError, match="no element amounts"):
        ArcMeltRoute().plan({"temperature_c": 800}, None)


def test_a_plan_beyond_the_melters_limits_is_named_before_anything_moves():
    world = AlloyWorld(outputs=["magnetic_moment"])
    hardware = ArcMelter.hardware(world, None)
    arc = soft_device(hardware["arc"], "melter_arc", {"current_sp": (50.0, 380.0)})
    station = ArcMelter(world, {"arc": arc})
    recipe = ArcMeltRoute().plan({"Fe": 0.7, "Cr": 0.3}, None)  # chromium: 2180 K, 392 A
    assert check_limits(station.plan(recipe, {"sample_id": "S0001"})) == [
        "melter_arc_current_sp = 392.4 A is above its upper limit 380 A"]
    assert hardware["arc"].values["product"] == ""  # only checked: the melter never ran
    assert check_limits(station.plan(ArcMeltRoute().plan({"Fe": 0.7, "Ni": 0.3}, None), {})) == []


def test_the_campaign_runs_and_keeps_athanors_promises(athanor_campaign, athanor_run):
    run = athanor_run(athanor_campaign(CAMPAIGN, budget={"experiments": 4}))
    assert run.status == "completed"
    samples = run.samples()
    assert [s["state"] for s in samples] == ["learned"] * 4
    assert all(s["product"]["melts"] == 4 for s in samples)
    assert_invariants(run.store, run.spec, run.out)


def test_a_melter_fault_fails_that_button_only(athanor_campaign, athanor_run):
    worlds = []

    def faulty(world):
        worlds.append(FaultyWorld(world, fail={"S0002:synthesis"}))
        return worlds[-1]

    run = athanor_run(athanor_campaign(CAMPAIGN, budget={"experiments": 4}), wrap_world=faulty)
    states = {s["id"]: s["state"] for s in run.samples()}
    assert states == {"S0001": "learned", "S0002": "failed", "S0003": "learned", "S0004": "learned"}
    assert "injected fault during S0002:synthesis" in run.store.sample("S0002")["error"]
    asked = sum((w.calls for w in worlds), start=Counter())
    assert asked["S0002:synthesis"] == 1 and max(asked.values()) == 1  # nothing was tried twice
    assert_invariants(run.store, run.spec, run.out)


def test_chromium_needs_more_current_than_this_lab_allows(athanor_campaign, athanor_run):
    config = athanor_campaign(CAMPAIGN, budget={"experiments": 2},
                              space={"composition": {"elements": {"Fe": [0.5, 0.7], "Cr": [0.3, 0.5]}}})
    run = athanor_run(config)
    assert {s["state"] for s in run.samples()} == {"failed"}
    [limits] = [c for c in check_campaign(run.store, run.spec, run.out) if c.name == "setpoints_within_limits"]
    assert len(limits.violations) == 2
    assert all("melter_arc_current_sp = 392.4 A is above its upper limit 380 A" in v for v in limits.violations)
