"""One lab, four campaigns: are shared instruments kept busy, and what does the scheduler cost per step?

    python -m benchmarks.lab_sharing                 # one node, then two; writes benchmarks/results/lab_sharing.md
    python -m benchmarks.lab_sharing --nodes 2       # only the two-node cluster

The setting (issue 15): a lab of 8 simulated instruments (4 synthesis, 4 characterization) at
`latency_s` 0.5 s per step, served by `athanor lab serve` on a real Ray cluster started here with
`ray start` (one node; or two, the second offering the resource `second_host`, with half of each
role pinned to it); 4 campaigns, each its own `athanor run` process joining by address, each with
the Bayesian designer over its own synthetic replay pool (instrument_pool.py's campaign: 3 inputs,
500 rows, no learner surrogates, no stall stop), all started at once.

Measured from the campaigns' stores (the instruments' own Bluesky start and stop documents):
* per instrument, utilization while work is queued: of the time during which at least one sample of
  its role, of any campaign, was ready and not yet started (a sample is ready for synthesis from its
  recipe, for characterization from its synthesis result), the share the instrument spent running a
  step. Target: >= 95 % for every instrument;
* makespan (first synthesis start to last characterization stop, over all campaigns) against the
  ideal: the total run time of each role over its 4 instruments, plus one step (the pipeline: the
  characterizers wait for the first synthesis, the synthesizers idle during the last
  characterization);
* per-step scheduling overhead: instrument-seconds idle while a sample of the role waited, divided by
  the steps run (idle_split of instrument_pool.py over the whole run, all campaigns' samples);
* the scheduler's own view (`athanor lab status --json`): busy_s / demand_s per instrument.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT / "tests")]
from helpers_cluster import Cluster  # noqa: E402 -- tests/ holds the loopback cluster both use
from instrument_pool import campaign_yaml, event_times, idle_split, instrument_runs, machine  # noqa: E402
from flat_cost import write_pool  # noqa: E402

TARGET = 0.95
ROLES = ("synthesis", "characterization")


def lab_yaml(per_role: int, nodes: int, queue_depth: int) -> str:
    lines = ["lab: bench", "scheduler: fair_share", f"queue_depth: {queue_depth}", "instruments:"]
    for role, stem in (("synthesis", "oven"), ("characterization", "meter")):
        for i in range(per_role):
            host = "second_host" if nodes == 2 and i >= per_role // 2 else "head_host"
            lines.append(f"  - {{name: {stem}{i + 1}, role: {role}, node_resource: {host}}}")
    return "\n".join(lines) + "\n"


def campaign_file(out: Path, index: int, args: argparse.Namespace) -> Path:
    pool = out / f"pool{index}.csv"
    write_pool(pool, args.pool_rows, index)
    data = yaml.safe_load(campaign_yaml("replay", pool, args.samples, args.batch_size, args.parallel_batches,
                                        args.latency_s, 1, 1, {}, index, 0.005))
    data.pop("instruments")
    if args.designer != "bayesian":
        data["designer"] = {"strategy": args.designer}
    data.update(campaign=f"lab_bench_{index}", lab="bench")
    path = out / f"campaign{index}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def union_length(intervals: list[tuple[float, float]]) -> tuple[float, list[tuple[float, float]]]:
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return sum(b - a for a, b in merged), [(a, b) for a, b in merged]


def analyse(outs: list[Path]) -> dict[str, Any]:
    from athanor.campaign import open_run

    runs, ready = [], {"synthesis": {}, "characterization": {}}
    for out in outs:
        store, _ = open_run(out)
        try:
            for r in instrument_runs(store):
                runs.append({**r, "sample_id": f"{out.name}/{r['sample_id']}"})
            for e in event_times(store, ("synthesis_recipe", "synthesis_result")):
                role = "synthesis" if e["kind"] == "synthesis_recipe" else "characterization"
                ready[role][f"{out.name}/{e['sample_id']}"] = e["t"]
        finally:
            store.close()
    role_of = {r["instrument"]: ("synthesis" if r["step"] == "synthesize" else "characterization") for r in runs}
    by_role = {role: [r for r in runs if role_of[r["instrument"]] == role] for role in ROLES}
    t0 = min(r["start"] for r in by_role["synthesis"])
    t1 = max(r["stop"] for r in by_role["characterization"])
    per: dict[str, Any] = {}
    for role in ROLES:
        started = {r["sample_id"]: r["start"] for r in by_role[role]}
        queued_s, queued = union_length([(ready[role][s], started[s]) for s in started
                                         if s in ready[role] and ready[role][s] < started[s]])
        for name in sorted({r["instrument"] for r in by_role[role]}):
            mine = [r for r in by_role[role] if r["instrument"] == name]
            busy_queued = sum(max(0.0, min(b, r["stop"]) - max(a, r["start"])) for r in mine for a, b in queued)
            per[name] = {"role": role, "runs": len(mine), "busy_s": round(sum(r["stop"] - r["start"] for r in mine), 3),
                         "queued_s": round(queued_s, 3),
                         "utilization_while_queued": round(busy_queued / queued_s, 4) if queued_s else None}
    steps = {role: len(by_role[role]) for role in ROLES}
    names = {role: sorted({r["instrument"] for r in by_role[role]}) for role in ROLES}
    idle = {role: idle_split(by_role[role], names[role], ready[role], t0, t1) for role in ROLES}
    step_s = statistics.median(r["stop"] - r["start"] for r in runs)
    ideal = max(sum(r["stop"] - r["start"] for r in by_role[role]) / len(names[role]) for role in ROLES) + step_s
    return {"instruments": per, "makespan_s": round(t1 - t0, 2), "ideal_s": round(ideal, 2),
            "makespan_over_ideal": round((t1 - t0) / ideal, 3), "median_step_s": round(step_s, 3),
            "min_utilization_while_queued": min(p["utilization_while_queued"] or 0.0 for p in per.values()),
            "overhead_ms_per_step": {role: round(1000 * idle[role]["overhead_s"] / steps[role], 1) for role in ROLES},
            "starved_s": {role: round(idle[role]["starved_s"], 2) for role in ROLES}, "steps": steps}


def lab_status(cluster: Cluster) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "athanor", "lab", "status", "bench", "--ray-address", cluster.address,
                          "--json"], capture_output=True, text=True, timeout=120, env=cluster.env)
    return json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr[-500:]}


def run_once(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / f"nodes{nodes}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    lab = out / "lab.yaml"
    lab.write_text(lab_yaml(args.per_role, nodes, args.queue_depth))
    cluster = Cluster(out, resources={"head_host": 1})
    server = None
    try:
        cluster.wait_nodes(1)
        if nodes == 2:
            cluster.add_node({"second_host": 1})
        log = open(out / "serve.log", "w")
        server = subprocess.Popen([sys.executable, "-m", "athanor", "lab", "serve", str(lab), "--ray-address",
                                   cluster.address], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env=cluster.env)
        while "served on the Ray cluster" not in (out / "serve.log").read_text():
            if server.poll() is not None:
                raise SystemExit((out / "serve.log").read_text())
            time.sleep(0.5)
        configs = [campaign_file(out, i, args) for i in range(args.campaigns)]
        started = time.monotonic()
        runs = [subprocess.Popen([sys.executable, "-m", "athanor", "run", str(c), "--out", str(out / f"run{i}"),
                                  "--quiet", "--ray-address", cluster.address], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, start_new_session=True, env=cluster.env)
                for i, c in enumerate(configs)]
        for process in runs:
            text, _ = process.communicate(timeout=1800)
            if process.returncode:
                raise SystemExit(f"a campaign failed:\n{text}")
        wall = time.monotonic() - started
        status = lab_status(cluster)
        report = analyse([out / f"run{i}" for i in range(args.campaigns)])
        report.update(nodes=nodes, wall_s=round(wall, 1), scheduler_view={
            i["name"]: {"node_id": (i["node_id"] or "")[:8], "busy_s": i["busy_s"], "demand_s": i["demand_s"],
                        "utilization_while_queued": i["utilization_while_queued"]}
            for i in status.get("instruments", [])})
        return report
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        cluster.stop()


def markdown(reports: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [f"# Lab sharing: {args.campaigns} campaigns, {2 * args.per_role} shared instruments",
             "", f"`python -m benchmarks.lab_sharing` — {time.strftime('%Y-%m-%d')}, commit {info.get('commit')}, "
             f"{info.get('cores')} cores. {args.campaigns} campaigns × {args.samples} samples ({args.designer} designer, batch "
             f"{args.batch_size}, {args.parallel_batches} in flight), {args.latency_s:g} s per step, queue depth "
             f"{args.queue_depth}.", "",
             "| nodes | min utilization while queued | makespan | ideal | makespan / ideal | overhead per step (synthesis / characterization) | idle with nothing queued (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        o, st = r["overhead_ms_per_step"], r["starved_s"]
        lines.append(f"| {r['nodes']} | {r['min_utilization_while_queued']:.1%} | {r['makespan_s']} s | {r['ideal_s']} s "
                     f"| {r['makespan_over_ideal']} | {o['synthesis']} / {o['characterization']} ms "
                     f"| {st['synthesis']} / {st['characterization']} |")
    for r in reports:
        lines += ["", f"## {r['nodes']} node(s): per instrument", "",
                  "| instrument | role | node | runs | busy | utilization while queued | scheduler's busy / demand |",
                  "|---|---|---|---|---|---|---|"]
        for name, p in r["instruments"].items():
            view = r["scheduler_view"].get(name, {})
            lines.append(f"| {name} | {p['role']} | {view.get('node_id', '?')} | {p['runs']} | {p['busy_s']} s "
                         f"| {p['utilization_while_queued']:.1%} | {view.get('utilization_while_queued')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=[1, 2], action="append", help="1, 2 or both (default both)")
    parser.add_argument("--campaigns", type=int, default=4)
    parser.add_argument("--per-role", type=int, default=4, help="instruments per role (default 4: 8 in all)")
    parser.add_argument("--samples", type=int, default=40, help="samples per campaign (default 40)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--parallel-batches", type=int, default=3)
    parser.add_argument("--latency-s", type=float, default=0.5)
    parser.add_argument("--designer", default="bayesian", help="the campaigns' strategy (default bayesian)")
    parser.add_argument("--queue-depth", type=int, default=2, help="the lab's queue_depth (default 2)")
    parser.add_argument("--pool-rows", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-lab")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "lab_sharing.md")
    args = parser.parse_args()
    info = machine()
    reports = []
    for nodes in args.nodes or [1, 2]:
        print(f"lab sharing on {nodes} node(s) ...", flush=True)
        reports.append(run_once(nodes, args))
        print(json.dumps({k: v for k, v in reports[-1].items() if k not in ("instruments", "scheduler_view")}),
              flush=True)
    args.results.write_text(markdown(reports, args, info))
    args.results.with_suffix(".json").write_text(json.dumps(reports, indent=1) + "\n")
    print(f"written: {args.results}")


if __name__ == "__main__":
    main()
