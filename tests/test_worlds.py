"""What every world shares: seeded noise, drift, instrument time and faults; options checked; the
shipped world configs run end to end, reproducibly."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from athanor.campaign import execute, prepare
from athanor.errors import AthanorError
from athanor.simulators.base import SimulatedConditions, sample_ordinal
from athanor.spec import load_campaign
from conftest import ROOT


def test_drift_grows_with_the_sample_number():
    conditions = SimulatedConditions(seed=3, drift=0.01)
    rng = conditions.rng("x")
    assert conditions.noisy({"a": 2.0}, rng, "S0010:characterization") == {"a": pytest.approx(2.2)}
    assert conditions.noisy({"a": 2.0}, rng, "S0000:characterization") == {"a": 2.0}
    assert sample_ordinal("S0042:synthesis") == 42 and sample_ordinal("calibration") == 0


def test_noise_is_seeded_by_step_not_by_order():
    conditions = SimulatedConditions(seed=5, noise=0.05)
    first = conditions.noisy({"a": 1.0}, conditions.rng("S0001:characterization"))
    conditions.noisy({"a": 1.0}, conditions.rng("S0002:characterization"))
    again = conditions.noisy({"a": 1.0}, conditions.rng("S0001:characterization"))
    other = SimulatedConditions(seed=6, noise=0.05)
    assert first == again != other.noisy({"a": 1.0}, other.rng("S0001:characterization"))


def test_instrument_time_is_latency_plus_scaled_modelled_time():
    conditions = SimulatedConditions(latency_s=0.05, time_scale=0.001)
    start = time.perf_counter()
    conditions.run_step("S0001:synthesis", modelled_s=100.0)  # 0.05 s + 0.1 s
    assert time.perf_counter() - start >= 0.15


def config_with(tmp_path, source: str, replace: dict[str, str]):
    text = (ROOT / "configs" / source).read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / source
    path.write_text(text)
    return path


def test_unknown_world_option_is_named(tmp_path):
    path = config_with(tmp_path, "alloy_slater_pauling.yaml", {"  kind: alloy\n": "  kind: alloy\n  options: {lattice: hcp}\n"})
    with pytest.raises(AthanorError, match=r"world.options: unknown option\(s\) 'lattice' for world 'alloy'; known: structure"):
        load_campaign(path)


def test_an_output_the_world_cannot_measure_is_named(tmp_path):
    path = config_with(tmp_path, "alloy_slater_pauling.yaml", {"name: magnetic_moment": "name: coercivity"})
    with pytest.raises(AthanorError, match="cannot measure 'coercivity'"):
        load_campaign(path)


def run_config(path, out, ray_address):
    store, spec = prepare(path, out, ray_address=ray_address)
    summary = execute(store, spec, out)
    return summary, pd.read_csv(out / "results.csv")


@pytest.mark.slow
def test_alloy_campaign_runs_and_replays_from_its_seed(tmp_path, ray_address):
    config = ROOT / "configs" / "alloy_slater_pauling.yaml"
    summary, results = run_config(config, tmp_path / "a", ray_address)
    _, again = run_config(config, tmp_path / "b", ray_address)
    assert summary["status"] == "completed" and len(results) == 12
    measured = results[results["state"] == "learned"]
    assert len(measured) >= 10 and measured["magnetic_moment"].between(0.0, 3.0).all()
    # the same campaign; only the clock times of the measurements differ
    pd.testing.assert_frame_equal(results.drop(columns="measured_at"), again.drop(columns="measured_at"))


@pytest.mark.slow
def test_solid_state_campaign_runs(tmp_path, ray_address):
    summary, results = run_config(ROOT / "configs" / "solid_state_spinel.yaml", tmp_path / "run", ray_address)
    assert summary["status"] == "completed" and len(results) == 8
    measured = results[results["state"] == "learned"]
    assert len(measured) >= 6 and measured["target_fraction"].between(0.0, 1.0).all()


@pytest.mark.slow
def test_perovskite_campaign_runs(tmp_path, ray_address):
    config = config_with(tmp_path, "perovskite_chgnet.yaml", {
        "    anion: O\n": f"    anion: O\n    cache_dir: {tmp_path / 'cache'}\n",
        "experiments: 6": "experiments: 4"})
    summary, results = run_config(config, tmp_path / "run", ray_address)
    assert summary["status"] == "completed" and len(results) == 4
    measured = results[results["state"] == "learned"]
    assert len(measured) == 4 and measured["reaction_energy"].between(-1.0, 0.2).all()
    assert any((tmp_path / "cache").rglob("*.json"))  # the runs were cached where the campaign said


@pytest.mark.slow
def test_solid_state_demo_learns_from_failed_routes(tmp_path, ray_address):
    from athanor.campaign import open_run

    summary, results = run_config(ROOT / "configs" / "solid_state_demo.yaml", tmp_path / "run", ray_address)
    assert summary["status"] == "completed" and len(results) == 10
    store, _ = open_run(tmp_path / "run")
    samples = [s for s in store.samples() if s["recipe"]]
    reactions = [s["recipe"]["reaction"] for s in samples]
    assert len(set(reactions)) >= 2  # the planner changed route
    first = samples[0]["recipe"]["reaction"]
    switch = next(i for i, r in enumerate(reactions) if r != first)
    lag = store.samples()[switch]["batch"] - 2  # parallel_batches: what the planner could have seen
    earlier = [s for s in samples[:switch] if s["batch"] <= lag and s["values"]]
    assert earlier and min(s["values"]["target_fraction"] for s in earlier) < 0.5  # ... after a failure
    for s in samples:  # masses from the planner, doses and furnace readings in the documents
        assert all(p["mass_g"] > 0 for p in s["recipe"]["precursors"])
    measured = results[results["state"] == "learned"]
    assert measured["target_fraction"].between(0.0, 1.0).all() and measured["target_fraction"].max() > 0.5


@pytest.mark.slow
def test_alloy_gradient_campaign_descends_the_world_model(tmp_path, ray_address):
    config = config_with(tmp_path, "alloy_gradient.yaml", {"experiments: 10": "experiments: 6"})
    summary, results = run_config(config, tmp_path / "run", ray_address)
    assert summary["status"] == "completed" and len(results) == 6
    # after the 3 space-filling samples, gradient proposals sit near the Slater–Pauling peak
    later = results[results["sample_id"] > "S0004"]
    assert later["magnetic_moment"].max() > 2.3


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["gradient", "random"])
def test_perovskite_multi_campaign_runs(tmp_path, ray_address, strategy):
    text = (ROOT / "configs" / "perovskite_multi.yaml").read_text()
    if strategy != "gradient":  # the same campaign with another designer (and none of its options)
        head, _, rest = text.partition("designer:\n")
        tail = rest.partition("world:\n")[2]
        text = head + f"designer:\n  strategy: {strategy}\nworld:\n" + tail
    cache = ROOT / ".cache" / "test-perovskite"  # shared by both runs: CHGNet relaxes each compound once
    text = text.replace("    anion: O\n", f"    anion: O\n    cache_dir: {cache}\n").replace("experiments: 12", "experiments: 6")
    config = tmp_path / "perovskite_multi.yaml"
    config.write_text(text)
    summary, results = run_config(config, tmp_path / "run", ray_address)
    assert summary["status"] == "completed" and len(results) == 6
    if strategy == "gradient":  # every proposal is charge-neutral with some oxidation states
        from pymatgen.core import Composition

        assert all(Composition(f"{a}{b}O3").oxi_state_guesses() for a, b in zip(results["a_site"], results["b_site"]))
        measured = results[results["state"] == "learned"]
        assert len(measured) >= 4 and measured["lattice_a"].between(3.5, 4.6).all()
