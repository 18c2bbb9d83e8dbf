"""A lab served on a real two-node Ray cluster on loopback, borrowed by campaigns that join it by address.

The cluster: a head node (resource `head_host`) and a second node (resource `furnace_host`), each a
`ray start` process group. Two labs are served on it by `athanor lab serve`: `lab_one` has one
instrument per role (the campaigns contend for them); `lab_two` has a second furnace on the second
node. The node is killed in the last test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from athanor.campaign import open_run
from athanor.commands import decide
from athanor.report import status_report
from conftest import ROOT, write_campaign
from helpers_cluster import Cluster
from helpers_proc import kill, wait_for

pytestmark = pytest.mark.slow

DEMO_LAB = ROOT / "configs" / "lab_demo.yaml"
LAB_ONE = """lab: lab_one
instruments:
  - {name: oven, role: synthesis, node_resource: head_host, on_interrupted: retry}
  - {name: meter, role: characterization, node_resource: head_host}
"""
LAB_TWO = """lab: lab_two
instruments:
  - {name: furnace_a, role: synthesis, node_resource: head_host, on_interrupted: retry}
  - {name: furnace_b, role: synthesis, node_resource: furnace_host, on_interrupted: retry}
  - {name: probe_a, role: characterization, node_resource: head_host}
"""


@pytest.fixture(scope="module")
def lab_cluster(tmp_path_factory):
    where = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(where, resources={"head_host": 1})
    servers: list[subprocess.Popen] = []
    try:
        cluster.wait_nodes(1)
        furnace_node = cluster.add_node({"furnace_host": 1})
        labs = {"lab_one": where / "lab_one.yaml", "lab_two": where / "lab_two.yaml", "lab_demo": DEMO_LAB}
        labs["lab_one"].write_text(LAB_ONE)
        labs["lab_two"].write_text(LAB_TWO)
        for name, path in labs.items():
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "athanor", "lab", "serve", str(path), "--ray-address", cluster.address],
                stdout=open(where / f"{name}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
                env=cluster.env))
        for name, server in zip(labs, servers):
            wait_for(lambda: "served on the Ray cluster" in (where / f"{name}.log").read_text() or server.poll() is not None,
                     timeout=180, what=f"{name} to be served")
            assert server.poll() is None, (where / f"{name}.log").read_text()
        yield {"cluster": cluster, "furnace_node": furnace_node, "dir": where}
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    kill(server)
        cluster.stop()


def lab_status(cluster: Cluster, lab: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "athanor", "lab", "status", lab, "--ray-address", cluster.address,
                          "--json"], capture_output=True, text=True, timeout=120, env=cluster.env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    return {i["name"]: i for i in report["instruments"]} | {"_labs": report["labs"]}


def lab_campaign(tmp_path: Path, name: str, lab: str, **options: Any) -> Path:
    path = write_campaign(tmp_path / f"{name}.yaml", name=name, **options)
    path.write_text(path.read_text() + f"lab: {lab}\n")
    return path


def run(config: Path, out: Path, cluster: Cluster, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "athanor", "run", str(config), "--out", str(out), "--quiet",
                             "--ray-address", cluster.address, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=cluster.env)


def finished(process: subprocess.Popen, timeout: float = 240) -> None:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{out}\n{err}"


def runs(out: Path, step: str | None = None) -> list[dict[str, Any]]:
    """Every Bluesky run the campaign's instruments stored: key, instrument, start and stop times."""
    store, _ = open_run(out)
    try:
        found = []
        for sample in store.samples():
            docs = store.documents(sample["id"])
            stops = {d["doc"]["run_start"]: d["doc"] for d in docs if d["name"] == "stop"}
            for d in docs:
                if d["name"] == "start" and (step is None or d["step"] == step):
                    stop = stops.get(d["doc"]["uid"])
                    found.append({"campaign": out.name, "sample": sample["id"], "key": d["idempotency_key"],
                                  "instrument": d["doc"]["instrument"], "start": d["doc"]["time"],
                                  "stop": stop["time"] if stop else None,
                                  "exit": stop["exit_status"] if stop else None})
        return found
    finally:
        store.close()


def events(out: Path, kind: str) -> list[Any]:
    store, _ = open_run(out)
    try:
        return store.events(kind=kind)
    finally:
        store.close()


def learned(out: Path) -> list[dict[str, Any]]:
    store, _ = open_run(out)
    try:
        return store.samples()
    finally:
        store.close()


def test_instruments_run_on_the_nodes_that_own_them(lab_cluster):
    cluster = lab_cluster["cluster"]
    nodes = {("furnace_host" in n["resources"]): n["id"] for n in cluster.alive_nodes()}
    status = lab_status(cluster, "lab_two")
    assert status["furnace_b"]["node_id"] == nodes[True]  # pinned to the node offering furnace_host
    assert status["furnace_a"]["node_id"] == status["probe_a"]["node_id"] == nodes[False]
    assert not any(status[n]["quarantined"] or status[n]["busy_with"] for n in ("furnace_a", "furnace_b", "probe_a"))
    assert [lab["lab"] for lab in lab_status(cluster, "lab_one")["_labs"]] == ["lab_one"]


def test_the_shipped_demo_lab_and_campaign_run_as_the_readme_says(lab_cluster, tmp_path):
    cluster = lab_cluster["cluster"]
    furnace_node = next(n["id"] for n in cluster.alive_nodes() if "furnace_host" in n["resources"])
    out = subprocess.run([sys.executable, "-m", "athanor", "lab", "status", "--ray-address", cluster.address,
                          "--json"], capture_output=True, text=True, timeout=120, env=cluster.env)
    every = json.loads(out.stdout)["instruments"]  # no lab named: every lab on the cluster
    assert {i["lab"] for i in every} == {"lab_one", "lab_two", "lab_demo"}
    demo = {i["name"]: i for i in every if i["lab"] == "lab_demo"}
    assert demo["furnace_b"]["node_id"] == furnace_node
    assert all({"name", "role", "node_id", "busy_with", "utilization"} <= set(i) for i in every)
    finished(run(ROOT / "configs" / "p3ht_lab.yaml", tmp_path / "demo", cluster, "--max-experiments", "6"))
    assert [s["state"] for s in learned(tmp_path / "demo")] == ["learned"] * 6
    assert {r["instrument"] for r in runs(tmp_path / "demo")} <= set(demo)


def test_two_campaigns_share_one_instrument_never_two_steps_at_once_and_both_complete(lab_cluster, tmp_path):
    cluster = lab_cluster["cluster"]
    outs = [tmp_path / "a", tmp_path / "b"]
    processes = [run(lab_campaign(tmp_path, f"share_{i}", "lab_one", budget=4, batch_size=2, latency_s=0.4, seed=i,
                                  approval="always"), out, cluster) for i, out in enumerate(outs)]
    # Both campaigns hold their proposals until both are ready, then contend for the oven from the same moment.
    wait_for(lambda: all(sum(s["awaiting_approval"] for s in learned(out)) == 4 for out in outs),
             timeout=180, what="both campaigns to have four proposals waiting")
    for out in outs:
        store, spec = open_run(out)
        decide(store, spec, ["S0001", "S0002", "S0003", "S0004"], True, "tester")
        store.close()
    for process in processes:
        finished(process)
    for out in outs:
        assert [s["state"] for s in learned(out)] == ["learned"] * 4
    for instrument in ("oven", "meter"):
        both = sorted((r for out in outs for r in runs(out) if r["instrument"] == instrument), key=lambda r: r["start"])
        assert len(both) == 8 and all(r["exit"] == "success" for r in both)
        for earlier, later in zip(both, both[1:]):
            assert later["start"] >= earlier["stop"], f"{instrument} ran two steps at once: {earlier} {later}"
    oven = [r["campaign"] for r in sorted((r for out in outs for r in runs(out, "synthesize")), key=lambda r: r["start"])]
    switches = sum(x != y for x, y in zip(oven, oven[1:]))
    assert switches >= 3, f"the oven served one campaign after the other, not both in turn: {oven}"


def test_a_campaign_killed_while_holding_an_instrument_releases_it(lab_cluster, tmp_path):
    cluster = lab_cluster["cluster"]
    config = lab_campaign(tmp_path, "doomed", "lab_one", budget=4, batch_size=2, latency_s=1.5)
    doomed = run(config, tmp_path / "doomed", cluster)
    wait_for(lambda: any(r["stop"] is None and r["instrument"] == "oven" for r in runs(tmp_path / "doomed")),
             timeout=180, what="a step running on the oven")
    kill(doomed)  # the driver dies holding the oven
    in_flight = [r for r in runs(tmp_path / "doomed") if r["stop"] is None]
    assert len(in_flight) == 1
    # The oven finishes the step it had begun (its documents reach the campaign's store), then is free.
    wait_for(lambda: runs(tmp_path / "doomed")[0]["stop"] is not None if len(runs(tmp_path / "doomed")) == 1 else
             all(r["stop"] is not None for r in runs(tmp_path / "doomed")), timeout=60, what="the begun step to end")

    def released() -> bool:
        status = lab_status(cluster, "lab_one")
        return status["_labs"][0]["campaigns"] == [] and status["oven"]["busy_with"] is None \
            and status["oven"]["queue"] == []
    wait_for(released, timeout=60, what="the lab to drop the dead campaign")

    other = tmp_path / "other"
    finished(run(lab_campaign(tmp_path, "other", "lab_one", budget=4, batch_size=2, latency_s=0.2), other, cluster))
    assert [s["state"] for s in learned(other)] == ["learned"] * 4

    finished(run(config, tmp_path / "doomed", cluster, "--resume"))  # and the dead one resumes on the lab
    assert [s["state"] for s in learned(tmp_path / "doomed")] == ["learned"] * 4
    keys = [r["key"] for r in runs(tmp_path / "doomed")]
    assert len(keys) == len(set(keys)) == 8  # every step once: the one in flight at the kill was recovered


def test_a_lost_node_interrupts_its_step_quarantines_its_instruments_and_the_campaign_goes_on(lab_cluster, tmp_path):
    cluster = lab_cluster["cluster"]
    nodes = {("furnace_host" in n["resources"]): n["id"] for n in cluster.alive_nodes()}
    out = tmp_path / "survivor"
    process = run(lab_campaign(tmp_path, "survivor", "lab_two", budget=6, batch_size=2, latency_s=1.0), out, cluster)
    wait_for(lambda: any(r["stop"] is None and r["instrument"] == "furnace_b" for r in runs(out)),
             timeout=180, what="a step running on furnace_b")
    cluster.kill(lab_cluster["furnace_node"])  # the furnace's computer is gone, mid-step
    finished(process)  # a campaign joined by address completes, on what is left of the lab
    assert [s["state"] for s in learned(out)] == ["learned"] * 6
    (joined,) = [e for e in events(out, "campaign_event") if e.event == "lab_joined"]
    assert joined.detail["lab"] == "lab_two" and joined.detail["nodes"]["furnace_b"] == nodes[True]
    store, spec = open_run(out)
    shown = status_report(store, spec)["instruments"]  # `athanor status`: the lab's instruments, not defaults
    store.close()
    assert shown["furnace_b"] == {"lab": "lab_two", "node_id": nodes[True]} and set(shown) == {
        "furnace_a", "furnace_b", "probe_a"}
    lost = [r for r in runs(out) if r["instrument"] == "furnace_b" and r["stop"] is None]
    assert len(lost) == 1
    (interrupted,) = events(out, "step_interrupted")
    assert interrupted.idempotency_key == lost[0]["key"] and interrupted.action == "retry"
    again = [r for r in runs(out) if r["sample"] == lost[0]["sample"] and r["key"] == lost[0]["key"] + ":2"]
    assert len(again) == 1 and again[0]["instrument"] == "furnace_a" and again[0]["exit"] == "success"
    quarantines = [e for e in events(out, "campaign_event") if e.event == "instrument_quarantined"]
    assert [e.detail["instrument"] for e in quarantines] == ["furnace_b"]
    status = lab_status(cluster, "lab_two")
    assert status["furnace_b"]["quarantined"] and not status["furnace_b"]["alive"]
    assert not status["furnace_a"]["quarantined"] and status["_labs"][0]["campaigns"] == []  # given back at the end
