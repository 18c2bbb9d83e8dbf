"""Instruments over EPICS: `athanor ioc` serves the simulated lab as Channel Access PVs on a free loopback
port, and campaigns drive it through ophyd EpicsSignals — end to end, with the IOC killed and restarted,
with an action that never completes, and with an instrument that does not answer."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import event_model
import pytest
import yaml

from athanor.agents.instrument import InstrumentAgent
from athanor.conductor import Conductor
from athanor.ioc import IocProcess
from athanor.runtime import local_agents
from athanor.spec import load_campaign
from athanor.store import Store
from conftest import ROOT

pytestmark = pytest.mark.slow


def config(tmp_path: Path, name: str, source: str = "alloy_slater_pauling.yaml", **changes) -> Path:
    """A campaign file: `source` with `changes` (dotted keys allowed) and every instrument over EPICS."""
    data = yaml.safe_load((ROOT / "configs" / source).read_text())
    data.update(campaign=name, ioc="external")
    data.setdefault("instruments", [{"name": "box1", "role": "synthesis"}, {"name": "meter1", "role": "characterization"}])
    data["world"]["failure_rate"] = 0.0
    for key, value in changes.items():
        target, *path = key.split(".")
        node = data
        for part in [target, *path][:-1]:
            node = node.setdefault(part, {})
        node[[target, *path][-1]] = value
    for instrument in data["instruments"]:
        instrument.setdefault("backend", "epics")
        instrument["prefix"] = "test:" if name == "pvs" else f"{name}:"  # one client per test process: new names
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def ca_env():
    """Channel Access for this test's IOC only: loopback, a free port, no auto address list."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}
    yield os.environ
    for key in [k for k in os.environ if k.startswith("EPICS_")]:
        del os.environ[key]
    os.environ.update(saved)


def run_campaign(path: Path, tmp_path: Path, environment: dict[str, str], during=None) -> tuple[Store, str]:
    spec = load_campaign(path)
    store = Store(f"sqlite:///{tmp_path}/{spec.campaign}.db", f"{spec.campaign}-1")
    store.register_campaign(spec.campaign, spec.model_dump(mode="json"))
    agents = local_agents(spec, store.campaign_id, store.url, environment)

    async def main() -> str:
        task = asyncio.create_task(Conductor(spec, store, agents).run())
        if during is not None:
            await asyncio.get_running_loop().run_in_executor(None, during, store)
        return await asyncio.wait_for(task, 300)

    return store, asyncio.run(main())


def caget(environment: dict[str, str], *pvs: str) -> list[str]:
    """Read PVs with caproto's command-line client: a CA client that shares nothing with Athanor."""
    out = subprocess.run([sys.executable, "-m", "caproto.commandline.get", "--no-repeater", "--format", "{response.data}", *pvs],
                         capture_output=True, text=True, env={**os.environ, **environment}, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_ioc_serves_every_listed_pv_to_a_standard_client(tmp_path, ca_env):
    path = config(tmp_path, "pvs", "solid_state_epics.yaml")
    listed = subprocess.run([sys.executable, "-m", "athanor", "ioc", str(path), "--list-pvs"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert "test:furnace1:furnace:temperature" in listed and "test:xrd1:diffractometer:counts" in listed
    assert all(name.startswith(("test:furnace1:", "test:xrd1:")) for name in listed)
    assert len(listed) == len(set(listed))
    other = subprocess.run([sys.executable, "-m", "athanor", "ioc", str(path), "--list-pvs", "--prefix", "lab7:"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert other == [name.replace("test:", "lab7:", 1) for name in listed]
    with IocProcess(path).start() as ioc:
        state, start, stop = caget(ioc.environment, "test:furnace1:furnace:state",
                                   "test:xrd1:diffractometer:two_theta_start", "test:xrd1:diffractometer:two_theta_stop")
        # the furnace's limits are the PV's control limits, and a write beyond them is refused by the IOC itself
        limits = subprocess.run([sys.executable, "-m", "caproto.commandline.get", "--no-repeater", "-d", "CTRL_DOUBLE",
                                 "--format", "{response.metadata.lower_ctrl_limit} {response.metadata.upper_ctrl_limit}",
                                 "test:furnace1:furnace:ramp_rate"], capture_output=True, text=True,
                                env={**os.environ, **ioc.environment}, timeout=60)
        assert limits.stdout.split() == ["0.1", "30.0"], limits.stderr
        put = subprocess.run([sys.executable, "-m", "caproto.commandline.put", "--no-repeater",
                              "test:furnace1:furnace:ramp_rate", "45"], capture_output=True, text=True,
                             env={**os.environ, **ioc.environment}, timeout=60)
        said = put.stdout + put.stderr
        assert "Limits are set to 0.1 and 30.0" in said or "outside its limits" in said, said
        [after] = caget(ioc.environment, "test:furnace1:furnace:ramp_rate")
        assert float(after.strip("[]")) == pytest.approx(5.0)  # unchanged
        # a client whose own hardware description has no limits still honours the IOC's
        from dataclasses import replace

        from athanor.instruments.devices import epics_device, use_caproto
        from athanor.instruments.hardware import Furnace
        from ophyd.utils import LimitError

        unlimited = type("Unlimited", (Furnace,), {"channels": tuple(replace(c, limits=None) for c in Furnace.channels)})
        os.environ.update(ioc.environment)
        use_caproto()
        furnace = epics_device(unlimited, "test:furnace1:furnace:", "furnace1_furnace", 5.0)
        furnace.check_connection()
        furnace.ramp_rate.check_value(12.0)
        with pytest.raises(LimitError, match="furnace1_furnace_ramp_rate = 45 degC/min is above its upper limit 30"):
            furnace.ramp_rate.check_value(45.0)
    assert "idle" in state
    world = load_campaign(path).world.options
    assert float(start.strip("[]")) == pytest.approx(10.0) and float(stop.strip("[]")) == pytest.approx(80.0), world


def test_a_campaign_over_channel_access_stores_valid_documents_with_the_pvs_readings(tmp_path, ca_env):
    path = config(tmp_path, "ca_e2e", "solid_state_epics.yaml", **{"budget.experiments": 2, "batch_size": 1})
    with IocProcess(path).start() as ioc:
        store, status = run_campaign(path, tmp_path, ioc.environment)
        temperature = caget(ioc.environment, "ca_e2e:furnace1:furnace:temperature")
    assert status == "completed"
    samples = store.samples()
    assert [s["state"] for s in samples] == ["learned", "learned"]
    for sample in samples:
        for step in ("synthesize", "characterize"):
            documents = store.step_documents(f"{store.campaign_id}:{sample['id']}:{step}")
            assert [n for n, _ in documents][0] == "start" and documents[-1][0] == "stop"
            for name, doc in documents:  # every one a valid event-model document
                event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)
            keys = {k: v for n, d in documents if n == "descriptor" for k, v in d["data_keys"].items()}
            events = [d for n, d in documents if n == "event"]
            if step == "synthesize":
                assert keys["furnace1_furnace_temperature"]["source"] == "PV:ca_e2e:furnace1:furnace:temperature"
                program = next(d for n, d in documents if n == "start")["program"]
                hottest = max(s["temperature_c"] for s in program["steps"])
                assert events[-1]["data"]["furnace1_furnace_peak_temperature"] == pytest.approx(hottest)
                masses = [v for e in events for k, v in e["data"].items() if k.endswith("_mass") and v > 0]
                assert masses, "the doser's balance readings are in the documents"
            else:
                assert keys["xrd1_diffractometer_counts"]["source"] == "PV:ca_e2e:xrd1:diffractometer:counts"
                assert len(events[-1]["data"]["xrd1_diffractometer_counts"]) > 1000
    assert float(temperature[0].strip("[]")) == pytest.approx(25.0)  # the furnace cooled after its last firing


def test_the_ioc_killed_and_restarted_mid_campaign_loses_no_sample_and_repeats_no_synthesis(tmp_path, ca_env):
    path = config(tmp_path, "ca_restart", **{"budget.experiments": 4, "batch_size": 1, "parallel_batches": 1,
                                              "world.latency_s": 0.3})
    for instrument in (data := yaml.safe_load(path.read_text()))["instruments"]:
        instrument.update(timeout_s=3, retries=8, backoff_s=0.25)
    path.write_text(yaml.safe_dump(data))
    ioc = IocProcess(path).start()
    killed = threading.Event()

    def kill_and_restart(store: Store) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the second sample at the meter: kill the IOC under it
            if any(e.step == "characterize" and e.sample_id == "S0002" for e in store.events(kind="step_intent")):
                ioc.kill()
                killed.set()
                time.sleep(1.0)
                ioc.start()
                return
            time.sleep(0.05)

    try:
        store, status = run_campaign(path, tmp_path, ioc.environment, during=kill_and_restart)
    finally:
        ioc.stop()
    assert killed.is_set()
    assert status == "completed"
    assert [s["state"] for s in store.samples()] == ["learned"] * 4
    for sample in store.samples():
        syntheses = [e for e in store.events(sample["id"], kind="step_intent") if e.step == "synthesize"]
        runs = [d for n, d in store.step_documents(f"{store.campaign_id}:{sample['id']}:synthesize") if n == "start"]
        assert len(syntheses) == 1 and len(runs) == 1, sample["id"]


def test_an_action_that_never_completes_is_a_fault_within_the_timeout(tmp_path, ca_env):
    path = config(tmp_path, "ca_stall")
    data = yaml.safe_load(path.read_text())
    data["instruments"][0].update(timeout_s=1.5, retries=0)
    path.write_text(yaml.safe_dump(data))
    spec = load_campaign(path)
    with IocProcess(path, extra=("--stall", "box1")).start() as ioc:
        agent = InstrumentAgent(spec.model_dump(mode="json"), "c", "box1", None, ioc.environment)
        recipe = {"kind": "synthesis_recipe", "campaign_id": "c", "sample_id": "S0001", "sender": "planner",
                  "route": "direct", "inputs": {"Fe": 0.7, "Co": 0.2, "Ni": 0.1, "Cr": 0.0}}
        began = time.monotonic()
        reply = agent.run(recipe, "c:S0001:synthesize")
        took = time.monotonic() - began
        state = caget(ioc.environment, "ca_stall:box1:synthesizer:state")
    assert took < 10
    assert "lost" in reply and reply["message"] is None, reply
    assert "ca_stall:box1:synthesizer:acquire did not complete within 1.5 s" in reply["lost"]
    assert "'busy'" in reply["lost"] and "busy" in state[0]
    names = [n for n, _ in reply["documents"]]
    assert names[0] == "start" and names[-1] == "stop"  # the run was opened and closed, failed
    assert reply["documents"][-1][1]["exit_status"] == "fail"


def test_an_instrument_that_does_not_answer_is_quarantined_and_the_campaign_goes_on(tmp_path, ca_env):
    served = config(tmp_path, "ca_pool")
    data = yaml.safe_load(served.read_text())
    data["instruments"].insert(1, {"name": "box2", "role": "synthesis", "backend": "epics", "prefix": "nowhere:",
                                   "retries": 1, "backoff_s": 0.1, "quarantine_after": 1})
    data["budget"]["experiments"], data["batch_size"] = 6, 2
    path = tmp_path / "ca_pool_campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    with IocProcess(served).start() as ioc:
        store, status = run_campaign(path, tmp_path, ioc.environment)
    assert status == "completed"
    assert {s["state"] for s in store.samples()} == {"learned"}
    events = store.events(kind="campaign_event")
    unavailable = [e for e in events if e.event == "instrument_unavailable"]
    quarantined = [e for e in events if e.event == "instrument_quarantined"]
    assert len(unavailable) == 1 and unavailable[0].detail["instrument"] == "box2"
    assert "nowhere:box2:synthesizer:acquire does not answer" in unavailable[0].detail["reason"]
    assert [e.detail["instrument"] for e in quarantined] == ["box2"]
    assert "1 step lost in a row" in quarantined[0].detail["reason"]
    # every synthesis ran on box1, once
    intents = [e for e in store.events(kind="step_intent") if e.step == "synthesize"]
    done = {e.sample_id for e in store.events(kind="synthesis_result")}
    assert done == {s["id"] for s in store.samples()}
    assert {e.instrument for e in store.events(kind="synthesis_result")} == {"box1"}
    assert len(intents) == 6 + 1  # six syntheses, and the one box2 never answered


def test_athanor_run_serves_its_own_ioc_for_an_embedded_dry_run(tmp_path, ray_address):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "athanor", "run", str(ROOT / "configs" / "solid_state_epics.yaml"),
                             "--out", str(out), "--max-experiments", "2", "--ray-address", ray_address, "--quiet"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["n_measured"] == 2, summary
    store = Store(json.loads((out / "run.json").read_text())["store_url"], summary["campaign_id"])
    (start, *_) = [d for n, d in store.step_documents(f"{summary['campaign_id']}:S0001:synthesize") if n == "start"]
    descriptors = [d for n, d in store.step_documents(f"{summary['campaign_id']}:S0001:synthesize") if n == "descriptor"]
    assert start["instrument"] == "furnace1"
    assert any(v["source"].startswith("PV:athanor:furnace1:") for d in descriptors for v in d["data_keys"].values())


def test_every_write_waits_for_its_completion_at_most_the_instruments_timeout(ca_env):
    # ophyd's default write_timeout is None (wait forever): an IOC killed between a setpoint's put
    # and its completion callback hung a plan, and the campaign with it (seen in CI, issue 16).
    from athanor.instruments.devices import epics_device, use_caproto
    from athanor.instruments.hardware import Furnace

    ca_env.update(EPICS_CA_ADDR_LIST="127.0.0.1", EPICS_CA_AUTO_ADDR_LIST="NO", EPICS_CA_SERVER_PORT="1")
    use_caproto()
    device = epics_device(Furnace, "nowhere:", "furnace", timeout_s=2.5)
    writable = [c.name for c in Furnace.all_channels() if c.writable]
    assert writable and "ramp_rate" in writable
    for name in ["acquire", *writable]:
        assert getattr(device, name).write_timeout == 2.5, name
