"""The lab's simulated hardware: powder doser, furnace and diffractometer as soft ophyd devices driven
by Bluesky plans, and the instrument stations that build them from what their world supports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky import RunEngine

from athanor import registry
from athanor.agents.instrument import InstrumentAgent, root_cause
from athanor.errors import SpecError
from athanor.instruments.devices import soft_device
from athanor.instruments.hardware import Diffractometer
from athanor.instruments.plans import characterize, fire
from athanor.instruments.stations import (OneBoxSynthesizer, PowderFurnace, ProbeStation, XrdStation,
                                          station_for)
from athanor.messages import CharacterizationRequest, Fault, SynthesisRecipe, parse_message, to_wire
from athanor.simulators.base import InstrumentFault, SimulatedConditions
from athanor.simulators.solid_state import SolidStateWorld
from athanor.spec import load_campaign
from conftest import ROOT

RECIPE = {"inputs": {"temperature_c": 1300, "time_h": 4}, "precursors": ["MgCO3", "Al(OH)3"]}


def world(**conditions) -> SolidStateWorld:
    return SolidStateWorld(target="MgAl2O4", conditions=SimulatedConditions(seed=2, **conditions))


def run(plan) -> tuple[list[tuple[str, dict]], RunEngine]:
    engine = RunEngine(context_managers=[])
    documents: list[tuple[str, dict]] = []
    engine.subscribe(lambda name, doc: documents.append((name, doc)))
    engine(plan)
    return documents, engine


def docs(documents, name):
    return [doc for n, doc in documents if n == name]


def stream(documents, stream_name):
    descriptors = {d["uid"] for d in docs(documents, "descriptor") if d["name"] == stream_name}
    return [e for e in docs(documents, "event") if e["descriptor"] in descriptors]


def fire_once(w: SolidStateWorld, sample: str = "S0001", hardware: dict | None = None):
    """One synthesis run on the powder furnace's hardware (fresh, unless given), as soft devices."""
    hardware = hardware or PowderFurnace.hardware(w, None)
    doser, furnace = (soft_device(hardware[d], f"synth_{d}") for d in ("doser", "furnace"))
    lab = w.lab_recipe(RECIPE)
    documents, _ = run(fire(doser, furnace, lab, md={"sample_id": sample}))
    return documents, lab, hardware


def masses(documents) -> list[float]:
    (dosed,) = stream(documents, "doses")
    return [dosed["data"][f"synth_doser_hopper{i}_mass"] for i in (1, 2)]


def test_synthesis_run_records_the_doses_the_furnace_and_the_product():
    w = world()
    documents, lab, hardware = fire_once(w)
    (start,) = docs(documents, "start")
    assert start["sample_id"] == "S0001" and start["plan_name"] == "synthesize"
    assert start["program"]["steps"] == [{"temperature_c": 1300.0, "time_h": 4.0}]
    (dosed,) = stream(documents, "doses")
    assert [dosed["data"][f"synth_doser_hopper{i}_powder"] for i in (1, 2, 3)] == ["MgCO3", "Al(OH)3", ""]
    assert masses(documents) == pytest.approx([d["mass_g"] for d in lab["doses"]])  # noise 0: exact
    assert dosed["data"]["synth_doser_hopper3_mass"] == 0.0
    assert dosed["data"]["synth_doser_total_mass"] == pytest.approx(sum(d["mass_g"] for d in lab["doses"]))
    (fired,) = stream(documents, "primary")
    assert list(fired["data"]["synth_furnace_program_temperatures"]) == [1300.0]
    assert list(fired["data"]["synth_furnace_program_dwells"]) == [4.0]
    assert fired["data"]["synth_furnace_state"] == "idle"
    product = json.loads(fired["data"]["synth_furnace_product"])
    assert product["mass_in_g"] == pytest.approx(sum(d["mass_g"] for d in lab["doses"]))
    assert product["phases"] == pytest.approx(w.synthesize(RECIPE, "S0001:synthesis")["phases"], abs=1e-9)
    assert hardware["doser"].crucible and hardware["furnace"].doser is hardware["doser"]
    assert docs(documents, "stop")[0]["exit_status"] == "success"


def test_a_new_crucible_starts_empty_and_the_doser_noise_is_seeded():
    w = world(noise=0.02)
    first, lab, hardware = fire_once(w)
    again, _, _ = fire_once(w, hardware=hardware)  # the same doser, the same sample: a clean crucible
    dispensed = masses(first)
    assert dispensed == masses(again)  # seeded by the step key
    assert all(0.9 < m / d["mass_g"] < 1.1 and m != d["mass_g"] for m, d in zip(dispensed, lab["doses"]))
    assert len(hardware["doser"].crucible) == 2  # not four
    assert hardware["doser"].values["total_mass"] == pytest.approx(sum(dispensed))  # not twice
    other, _, _ = fire_once(w, "S0002")
    assert masses(other) != dispensed


def test_characterization_run_carries_the_pattern_and_what_to_fit():
    w = world(noise=0.02)
    documents, *_ = fire_once(w)
    product = json.loads(stream(documents, "primary")[0]["data"]["synth_furnace_product"])
    device = soft_device(Diffractometer(w), "probe_diffractometer")
    documents, _ = run(characterize(product, [device], md={"sample_id": "S0001"}))
    (start,) = docs(documents, "start")
    assert start["sample_id"] == "S0001" and start["channels"] == {}
    fields = start["pattern_fields"]
    assert fields == {"two_theta": "probe_diffractometer_two_theta", "intensity": "probe_diffractometer_counts"}
    (descriptor,) = docs(documents, "descriptor")
    for key in fields.values():
        assert descriptor["data_keys"][key]["dtype"] == "array" and descriptor["data_keys"][key]["shape"] == [3501]
    (event,) = docs(documents, "event")
    two_theta, counts = event["data"][fields["two_theta"]], event["data"][fields["intensity"]]
    assert len(two_theta) == len(counts) == 3501 and two_theta[0] == 10.0 and counts.max() > 100
    rng = w.conditions.rng("S0001:characterization")
    rng.random()  # the step's fault draw comes first
    _, expected = w.pattern(product, rng, counts=1 / 0.02 ** 2)
    assert np.array_equal(counts, expected)  # seeded by the sample on the stage
    assert set(start["candidate_phases"]) == {"MgAl2O4", "MgCO3", "Al(OH)3", "MgO", "Al2O3"}
    assert start["candidate_phases"][0] == "MgAl2O4" and start["amorphous_phases"] == []
    assert start["target"] == "MgAl2O4" and start["precursors"] == ["Al(OH)3", "MgCO3"]
    assert start["decomposition_products"] == ["Al2O3", "MgO"] and start["side_phases"] == []


def test_a_furnace_fault_fails_the_run():
    w = world(failure_rate=0.999999)
    hardware = PowderFurnace.hardware(w, None)
    with pytest.raises(Exception) as caught:
        fire_once(w, hardware=hardware)
    assert isinstance(root_cause(caught.value), InstrumentFault)
    furnace = hardware["furnace"]
    assert furnace.values["state"] == "fault" and "simulated instrument fault" in furnace.values["error"]
    status = soft_device(furnace, "f").trigger()  # the device itself: a failed status, not an exception
    assert status.done and not status.success and isinstance(status.exception(), InstrumentFault)


def spec_of(config: str, **world) -> dict:
    spec = load_campaign(ROOT / "configs" / config).model_dump(mode="json")
    spec["world"].update({"latency_s": 0.0, "time_scale": 0.0, **world})
    return spec


def recipe_message(inputs: dict) -> dict:
    return to_wire(SynthesisRecipe(campaign_id="c", sample_id="S0003", sender="test", route="direct", inputs=inputs))


def request_message(product: dict) -> dict:
    return to_wire(CharacterizationRequest(campaign_id="c", sample_id="S0003", sender="test", product=product,
                                           probe="probe"))


def test_the_solid_state_station_doses_fires_and_scans():
    spec = spec_of("solid_state_spinel.yaml", failure_rate=0.0)
    synth = InstrumentAgent(spec, "c", "synthesizer")
    assert isinstance(synth.station, PowderFurnace)
    assert [d.name for d in synth.devices] == ["synthesizer_doser", "synthesizer_furnace"]
    inputs = {"Zn": 0.33, "Fe": 0.67, "temperature_c": 1000.0, "time_h": 4.0, "atmosphere": "air"}
    made = synth.run(recipe_message(inputs), "c:S0003:synthesize")
    result = parse_message(made["message"])
    assert result.kind == "synthesis_result" and result.product["target"] == "ZnFe2O4"
    assert {d["sample_id"] for n, d in made["documents"] if n == "start"} == {"S0003"}
    (dosed,) = stream(made["documents"], "doses")
    assert {dosed["data"][f"synthesizer_doser_hopper{i}_powder"] for i in (1, 2)} == {"ZnO", "Fe2O3"}
    (fired,) = stream(made["documents"], "primary")
    assert list(fired["data"]["synthesizer_furnace_program_temperatures"]) == [1000.0]
    probe = InstrumentAgent(spec, "c", "probe")
    assert isinstance(probe.station, XrdStation)
    read = probe.run(request_message(result.product), "c:S0003:characterize")
    assert read["message"] is None and read["tries"] == 1 and "lost" not in read
    (start,) = [d for n, d in read["documents"] if n == "start"]
    (event,) = [d for n, d in read["documents"] if n == "event"]
    assert len(event["data"][start["pattern_fields"]["intensity"]]) == 3501
    assert "ZnFe2O4" in start["candidate_phases"]


def test_the_station_turns_a_furnace_fault_into_a_fault_message():
    synth = InstrumentAgent(spec_of("solid_state_spinel.yaml", failure_rate=0.999999), "c", "synthesizer")
    made = synth.run(recipe_message({"Zn": 0.33, "Fe": 0.67, "temperature_c": 900.0, "time_h": 1.0,
                                     "atmosphere": "air"}), "k")
    fault = parse_message(made["message"])
    assert isinstance(fault, Fault) and "simulated instrument fault" in fault.error
    assert "lost" not in made and "unavailable" not in made
    assert [d["exit_status"] for n, d in made["documents"] if n == "stop"] == ["fail"]


def test_a_scalar_world_gets_the_one_box_synthesizer_and_a_property_probe():
    spec = spec_of("alloy_slater_pauling.yaml", failure_rate=0.0)
    synth = InstrumentAgent(spec, "c", "synthesizer")
    assert isinstance(synth.station, OneBoxSynthesizer)
    assert [d.name for d in synth.devices] == ["synthesizer_synthesizer"]
    made = synth.run(recipe_message({"Fe": 0.7, "Co": 0.3, "Ni": 0.0, "Cr": 0.0}), "k")
    product = parse_message(made["message"]).product
    probe = InstrumentAgent(spec, "c", "probe")
    assert isinstance(probe.station, ProbeStation) and [d.name for d in probe.devices] == ["probe_probe"]
    read = probe.run(request_message(product), "k2")
    (start,) = [d for n, d in read["documents"] if n == "start"]
    (event,) = [d for n, d in read["documents"] if n == "event"]
    assert start["channels"] == {"probe_probe_magnetic_moment": "magnetic_moment"} and "pattern_fields" not in start
    assert 1.0 < event["data"]["probe_probe_magnetic_moment"] < 3.0


@pytest.mark.parametrize("config, kinds", [("solid_state_spinel.yaml", ["powder_furnace", "xrd"]),
                                           ("alloy_slater_pauling.yaml", ["synthesizer", "probe"])])
def test_station_for_suits_the_world_and_an_unknown_kind_is_rejected(config, kinds):
    spec = load_campaign(ROOT / "configs" / config)
    w = registry.make_world(spec)
    assert [station_for(spec, i, w) for i in spec.instruments] == [
        registry.load("athanor.instruments", k) for k in kinds]
    registry.check_plugins(spec)  # the defaults pass
    dumped = spec.model_dump(mode="json")
    dumped["instruments"][0]["kind"] = "glovebox_furnace"
    with pytest.raises(SpecError) as caught:
        registry.check_plugins(type(spec).model_validate(dumped))
    assert "instruments.0.kind" in str(caught.value) and "glovebox_furnace" in str(caught.value)
