"""The lab's simulated hardware: powder doser, furnace and diffractometer driven by Bluesky plans, and
the instrument station that builds them from what its world supports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bluesky import RunEngine

from athanor.agents.instrument import InstrumentAgent
from athanor.instruments.devices import SimulatedSynthesizer, make_probe
from athanor.instruments.lab import Diffractometer, characterization_devices, synthesis_devices
from athanor.instruments.plans import characterize, synthesize
from athanor.messages import CharacterizationRequest, Fault, SynthesisRecipe, parse_message, to_wire
from athanor.simulators.alloy import AlloyWorld
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


def fire(w: SolidStateWorld, sample: str = "S0001"):
    doser, furnace = synthesis_devices(w, "synth")
    doser.step_key = furnace.step_key = f"{sample}:synthesis"
    lab = w.lab_recipe(RECIPE)
    documents, _ = run(synthesize(doser, furnace, lab, md={"sample_id": sample}))
    return documents, lab, doser, furnace


def test_synthesis_run_records_the_doses_the_furnace_and_the_product():
    w = world()
    documents, lab, doser, furnace = fire(w)
    (start,) = docs(documents, "start")
    assert start["sample_id"] == "S0001" and start["plan_name"] == "synthesize"
    doses = stream(documents, "doses")
    assert [e["data"]["synth_doser_formula"] for e in doses] == ["MgCO3", "Al(OH)3"]
    for event, dose in zip(doses, lab["doses"]):
        assert event["data"]["synth_doser_dispensed"] == pytest.approx(dose["mass_g"])  # noise 0: exact
    assert json.loads(doses[-1]["data"]["synth_doser_contents"]) == pytest.approx(
        {d["formula"]: d["mass_g"] for d in lab["doses"]})
    (fired,) = stream(documents, "primary")
    assert fired["data"]["synth_furnace_temperature"] == 1300.0 and fired["data"]["synth_furnace_dwell"] == 4.0
    product = json.loads(fired["data"]["synth_furnace_product"])
    assert product["mass_in_g"] == pytest.approx(sum(d["mass_g"] for d in lab["doses"]))
    assert product["phases"] == pytest.approx(w.synthesize(RECIPE, "S0001:synthesis")["phases"], abs=1e-9)
    assert docs(documents, "stop")[0]["exit_status"] == "success"


def test_a_new_crucible_starts_empty_and_the_doser_noise_is_seeded():
    w = world(noise=0.02)
    first, lab, doser, _ = fire(w)
    again, *_ = fire(w)
    dispensed = [e["data"]["synth_doser_dispensed"] for e in stream(first, "doses")]
    assert dispensed == [e["data"]["synth_doser_dispensed"] for e in stream(again, "doses")]
    assert all(0.9 < m / d["mass_g"] < 1.1 and m != d["mass_g"] for m, d in zip(dispensed, lab["doses"]))
    assert sum(json.loads(doser.contents.get()).values()) == pytest.approx(sum(dispensed))  # not twice


def test_characterization_run_carries_the_pattern_and_what_to_fit():
    w = world(noise=0.02)
    documents, *_ = fire(w)
    product = json.loads(stream(documents, "primary")[0]["data"]["synth_furnace_product"])
    devices = characterization_devices(w, "probe")
    assert isinstance(devices[0], Diffractometer)
    for d in devices:
        d.step_key = "S0001:characterization"
    documents, _ = run(characterize(product, devices, md={"sample_id": "S0001"}))
    (start,) = docs(documents, "start")
    assert start["sample_id"] == "S0001"
    fields = start["pattern_fields"]
    (descriptor,) = docs(documents, "descriptor")
    for key in fields.values():
        assert descriptor["data_keys"][key]["dtype"] == "array" and descriptor["data_keys"][key]["shape"] == [3501]
    (event,) = docs(documents, "event")
    two_theta, counts = event["data"][fields["two_theta"]], event["data"][fields["intensity"]]
    assert len(two_theta) == len(counts) == 3501 and two_theta[0] == 10.0 and counts.max() > 100
    rng = w.conditions.rng("S0001:characterization")
    rng.random()  # the step's fault draw comes first
    _, expected = w.pattern(product, rng, counts=1 / 0.02 ** 2)
    assert np.array_equal(counts, expected)  # seeded by the step key
    assert set(start["candidate_phases"]) == {"MgAl2O4", "MgCO3", "Al(OH)3", "MgO", "Al2O3"}
    assert start["candidate_phases"][0] == "MgAl2O4" and start["amorphous_phases"] == []
    assert start["target"] == "MgAl2O4" and start["precursors"] == ["Al(OH)3", "MgCO3"]
    assert start["decomposition_products"] == ["Al2O3", "MgO"] and start["side_phases"] == []
    assert set(start["channels"].values()) <= set(w.outputs)


def test_a_furnace_fault_fails_the_run():
    w = world(failure_rate=0.999999)
    with pytest.raises(Exception) as caught:
        fire(w)
    assert isinstance(caught.value.__cause__ or caught.value, InstrumentFault)


def spec_of(config: str, **world) -> dict:
    spec = load_campaign(ROOT / "configs" / config).model_dump(mode="json")
    spec["world"].update({"latency_s": 0.0, "time_scale": 0.0, **world})
    return spec


def recipe_message(inputs: dict) -> dict:
    return to_wire(SynthesisRecipe(campaign_id="c", sample_id="S0003", sender="test", route="direct", inputs=inputs))


def test_the_solid_state_station_doses_fires_and_scans():
    spec = spec_of("solid_state_spinel.yaml", failure_rate=0.0)
    synth = InstrumentAgent(spec, "c", "synthesizer")
    assert [type(d).__name__ for d in synth.devices] == ["PowderDoser", "Furnace"]
    inputs = {"Zn": 0.33, "Fe": 0.67, "temperature_c": 1000.0, "time_h": 4.0, "atmosphere": "air"}
    made = synth.run(recipe_message(inputs), "c:S0003:synthesize")
    result = parse_message(made["message"])
    assert result.kind == "synthesis_result" and result.product["target"] == "ZnFe2O4"
    assert {d["sample_id"] for n, d in made["documents"] if n == "start"} == {"S0003"}
    probe = InstrumentAgent(spec, "c", "probe")
    request = to_wire(CharacterizationRequest(campaign_id="c", sample_id="S0003", sender="test",
                                              product=result.product, probe="probe"))
    read = probe.run(request, "c:S0003:characterize")
    assert read["message"] is None
    (start,) = [d for n, d in read["documents"] if n == "start"]
    (event,) = [d for n, d in read["documents"] if n == "event"]
    assert len(event["data"][start["pattern_fields"]["intensity"]]) == 3501  # JSON lists by now
    assert "ZnFe2O4" in start["candidate_phases"]


def test_the_station_turns_a_furnace_fault_into_a_fault_message():
    synth = InstrumentAgent(spec_of("solid_state_spinel.yaml", failure_rate=0.999999), "c", "synthesizer")
    made = synth.run(recipe_message({"Zn": 0.33, "Fe": 0.67, "temperature_c": 900.0, "time_h": 1.0,
                                     "atmosphere": "air"}), "k")
    fault = parse_message(made["message"])
    assert isinstance(fault, Fault) and "simulated instrument fault" in fault.error
    assert [d["exit_status"] for n, d in made["documents"] if n == "stop"] == ["fail"]


def test_a_scalar_world_keeps_its_one_box_synthesizer_and_property_probe():
    spec = spec_of("alloy_slater_pauling.yaml", failure_rate=0.0)
    synth = InstrumentAgent(spec, "c", "synthesizer")
    assert [type(d) for d in synth.devices] == [SimulatedSynthesizer]
    made = synth.run(recipe_message({"Fe": 0.7, "Co": 0.3, "Ni": 0.0, "Cr": 0.0}), "k")
    product = parse_message(made["message"]).product
    probe = InstrumentAgent(spec, "c", "probe")
    assert [d.name for d in probe.devices] == ["probe"]
    read = probe.run(to_wire(CharacterizationRequest(campaign_id="c", sample_id="S0003", sender="test",
                                                     product=product, probe="probe")), "k2")
    (start,) = [d for n, d in read["documents"] if n == "start"]
    (event,) = [d for n, d in read["documents"] if n == "event"]
    assert start["channels"] == {"probe_magnetic_moment": "magnetic_moment"} and "pattern_fields" not in start
    assert 1.0 < event["data"]["probe_magnetic_moment"] < 3.0


def test_the_old_plan_signatures_still_work():
    w = AlloyWorld()
    synth, probe = SimulatedSynthesizer(name="s", world=w), make_probe(w, "p")
    documents, _ = run(synthesize(synth, {"inputs": {"Fe": 1.0}}, {"sample_id": "S1"}))
    product = json.loads(docs(documents, "event")[-1]["data"]["s_product"])
    documents, _ = run(characterize(probe, product, md={"sample_id": "S1"}))
    assert docs(documents, "start")[0]["sample_id"] == "S1"
    assert docs(documents, "event")[0]["data"]["p_magnetic_moment"] > 2.0
