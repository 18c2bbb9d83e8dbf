"""Instrument pools: does the conductor keep every instrument of a pool busy while a slow designer works?

    python -m benchmarks.instrument_pool         # writes benchmarks/results/instrument_pool.md (and runs/bench-pool/)

The issue's setting: 8 simulated instruments (4 synthesis, 4 characterization) at `world.latency_s`
0.5 s per step, a Bayesian designer whose proposals take 1-2 s; target: every instrument busy
>= 95 % of the campaign's wall time after the first batch.

The campaign: 240 samples from a replay pool of 500 synthetic rows (3 inputs, one smooth objective,
as in flat_cost.py), so a measurement is a table look-up and both steps cost the same 0.5 s; noise
0.5 %, no faults, automatic approval, no stall stop, no learner surrogates (nothing but the designer
competes with the lab for the CPU); the Bayesian designer with its default options, run through Ray
actors exactly as `athanor.campaign.execute` runs it (its calls, repeated here to keep
`Conductor.steps_handed` and the actors' process ids). With the alloy world (`--world alloy`: Fe-Co-Ni-Cr,
structure fixed to bcc) each measurement also computes the Stoner model, which made characterization
runs ~0.60 s against ~0.54 s for synthesis, and the designer optimizes over the continuous simplex,
9-21 s per batch of 16 with its default options on 2 cores: the lab starves.

The arithmetic of a busy lab: 4 synthesis instruments at 0.5 s take 8 samples/s, so a batch of q
samples is q/8 s of synthesis. Batch b is designed only once batch b - parallel_batches is finished
(`Conductor._may_design`: the determinism rule), so while the designer works the lab lives on the
(parallel_batches - 1) x q samples of the batches in between, less what the synthesizers take while
the gating batch's last samples are characterized and learned (~0.5 s + overheads). No instrument
starves if (parallel_batches - 1) x q / 8 s > proposal time + ~0.6 s, and the designer keeps up only
if a proposal takes < q / 8 s on average (one designer, one proposal at a time; it also needs that
share of a core). Defaults: q = 16 (2 s of synthesis per batch) and parallel_batches = 3 (4 s of
synthesis queued while a batch is designed), so proposals of up to ~2 s are hidden; the pool's size
(the designer scores every free row, once per pick) sets the proposal time: 500 rows give ~1-1.6 s
on 2 cores, 1,000 rows ~4-5 s.

Measured, from the store (exact: the instruments' own Bluesky documents, stamped by the instrument
as it emits them):
* per instrument, its runs: from the run's start document (`time`) to its stop document (`time`);
  the instrument is held for all of it: the 0.5 s sleep, the world's computation and the
  RunEngine's own cost (~15-20 ms a run here, so a run takes ~0.52 s);
* the window "after the first batch": from the moment the first sample of the second batch starts
  synthesis (its run's start document) to the end of the last characterization (the last stop
  document);
* utilization = the instrument's run time inside the window / the window; the minimum over the 8.
  The window's end includes the pipeline's drain: the synthesizers have nothing left to do while
  the last characterizations run (one step, ~0.5 s, ~1.7 % of a 30 s window), so it is also given
  over each role's own span (for the synthesizers, the window closed at their last stop);
* makespan = first synthesis start to last characterization stop; ideal = total instrument time
  (every run, whole campaign) / instruments; a two-stage pipeline needs at least one step more
  (the characterizers wait for the first synthesis, the synthesizers idle during the last
  characterization): the pipeline bound;
* where idle time went, per role: instrument-seconds idle while no sample of that role was waiting
  ("starved": the design gate, the designer, or the end of the budget) against idle while a sample
  was ready and waiting ("overhead": the conductor's turnaround, the Ray call, the run's start),
  in the window and in its part before the last synthesis start (after which the budget is spent).
  A sample waits for synthesis from its recipe (`synthesis_recipe.created_at`) and for
  characterization from its synthesis result (`synthesis_result.created_at`), until its run's start
  document;
* proposal time: `design_request.created_at` (the conductor, just before the call) to
  `design_proposal.created_at` (the designer, when its answer is made);
* the CPU: per agent process (from /proc) and the driver, the machine's busy share (/proc/stat),
  load averages. Other work on the machine stretches the designer and the platform: the run is
  fair only on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.95

# The Bayesian designer's own defaults (num_restarts 8, raw_samples 256, steps 60, mc_samples 128) take
# 5-15 s for a batch of 16 on this machine; these bring it near the 1-2 s.
DESIGNER_OPTIONS: dict[str, Any] = {}


# --- the campaign -------------------------------------------------------------------------------
# The pool is flat_cost.py's: 3 inputs in [0, 1], one smooth objective with a little noise.
if __package__:  # imported as benchmarks.instrument_pool
    from .flat_cost import INPUTS, OBJECTIVE, write_pool
    from .flat_cost import machine as flat_cost_machine
else:  # run as a script, or loaded by path (athanor bench): the sibling module sits in this file's folder
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flat_cost import INPUTS, OBJECTIVE, write_pool
    from flat_cost import machine as flat_cost_machine


def campaign_yaml(world: str, pool: Path | None, samples: int, batch_size: int, parallel_batches: int,
                  latency_s: float, synthesis: int, characterization: int, designer_options: dict[str, Any],
                  seed: int, noise: float) -> str:
    instruments = [f"  - {{name: box{i + 1}, role: synthesis}}" for i in range(synthesis)]
    instruments += [f"  - {{name: meter{i + 1}, role: characterization}}" for i in range(characterization)]
    if world == "replay":
        space = f"""space:
  pool:
    dataset: {pool.resolve() if pool else None}
    inputs: [{", ".join(INPUTS)}]
objectives:
  - name: {OBJECTIVE}
    direction: maximize"""
        world_options = ""
    else:
        space = """space:
  composition:
    elements:
      Fe: [0.3, 1.0]
      Co: [0.0, 0.7]
      Ni: [0.0, 0.5]
      Cr: [0.0, 0.2]
objectives:
  - name: magnetic_moment
    direction: maximize"""
        world_options = "\n  options: {structure: bcc}"
    return f"""# Written by benchmarks/instrument_pool.py: instrument pools kept busy while a Bayesian designer works.
campaign: instrument_pool
description: Instrument pools ({synthesis} synthesis, {characterization} characterization) at {latency_s:g} s per step.
seed: {seed}
{space}
budget:
  experiments: {samples}
batch_size: {batch_size}
parallel_batches: {parallel_batches}
designer:
  strategy: bayesian
  options: {json.dumps(designer_options)}
learner:
  stall_after: 0
  surrogates: []
world:
  kind: {world}
  noise: {noise}
  failure_rate: 0.0
  drift: 0.0
  latency_s: {latency_s}{world_options}
instruments:
{chr(10).join(instruments)}
approval:
  policy: auto
"""


def run_campaign(config: Path, run_dir: Path, on_progress: Callable[[dict[str, int]], None]) -> dict[str, Any]:
    """`athanor.campaign.prepare` + the body of `execute`, keeping the conductor (its `steps_handed`) and the
    agents' process ids (their CPU)."""
    import ray

    from athanor.campaign import channel_access, prepare
    from athanor.conductor import Conductor
    from athanor.report import write_outputs
    from athanor.runtime import connect, start_agents, stop_agents

    store, spec = prepare(config, run_dir)
    out: dict[str, Any] = {"store": store, "spec": spec}
    try:
        began = time.perf_counter()
        started_ray = connect(spec.ray_address)
        try:
            with channel_access(spec, run_dir) as environment:
                agents = start_agents(spec, store.campaign_id, store.url, environment)
                out["start_s"] = time.perf_counter() - began
                names = {"designer": agents.designer, "planner": agents.planner,
                         "characterizer": agents.characterizer, "learner": agents.learner, **agents.instruments}
                pids = _actor_pids(names)
                cpu_before = {name: _process_cpu_s(pid) for name, pid in pids.items()}
                machine_before, driver_before = _machine_cpu(), _driver_cpu_s()
                conductor = Conductor(spec, store, agents, previous_wall_s=store.wall_time_s(),
                                      on_progress=on_progress)
                t = time.perf_counter()
                try:
                    out["status"] = asyncio.run(conductor.run())
                    out["conductor_s"] = time.perf_counter() - t
                    out["agent_cpu_s"] = {name: _diff(_process_cpu_s(pid), cpu_before.get(name))
                                          for name, pid in pids.items()}
                    out["driver_cpu_s"] = _driver_cpu_s() - driver_before
                    out["machine_busy"] = _machine_busy(machine_before, _machine_cpu())
                finally:
                    stop_agents(agents)
                out["steps_handed"] = dict(conductor.steps_handed)
        finally:
            if started_ray:
                ray.shutdown()
        write_outputs(store, spec, run_dir, out.get("status", "failed"))
    finally:
        store.release_lease()
    return out


# --- CPU accounting ----------------------------------------------------------------------------
def _actor_pids(handles: dict[str, Any]) -> dict[str, int]:
    import ray

    try:
        refs = {name: h.__ray_call__.remote(lambda self: os.getpid()) for name, h in handles.items()}
        return {name: int(ray.get(ref, timeout=30)) for name, ref in refs.items()}
    except Exception as exc:  # noqa: BLE001 -- only the CPU breakdown is lost
        print(f"  (no actor pids: {type(exc).__name__}: {exc})", flush=True)
        return {}


def _process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _diff(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 2)


def _driver_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _machine_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# --- reading the store --------------------------------------------------------------------------
def _seconds(value: Any) -> float:
    if isinstance(value, datetime):
        moment = value
    else:  # SQLite hands back text when read without the ORM's type
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def instrument_runs(store: Any) -> list[dict[str, Any]]:
    """Every instrument run: instrument, step, sample, start and stop (the documents' own `time`)."""
    from sqlalchemy import select

    from athanor.tables import DocumentRow

    runs: dict[str, dict[str, Any]] = {}
    query = select(DocumentRow.run_uid, DocumentRow.name, DocumentRow.sample_id, DocumentRow.step,
                   DocumentRow.body).where(DocumentRow.campaign_id == store.campaign_id,
                                           DocumentRow.name.in_(("start", "stop"))).order_by(DocumentRow.id)
    with store.engine.connect() as connection:
        for uid, name, sample_id, step, body in connection.execute(query):
            run = runs.setdefault(uid, {"uid": uid, "sample_id": sample_id, "step": step})
            if name == "start":
                run.update(instrument=body.get("instrument"), start=float(body["time"]))
            else:
                run.update(stop=float(body["time"]), exit_status=body.get("exit_status"))
    unfinished = [r for r in runs.values() if "start" not in r or "stop" not in r]
    if unfinished:
        print(f"  ({len(unfinished)} runs without a start or a stop document: left out)", flush=True)
    return sorted((r for r in runs.values() if "start" in r and "stop" in r), key=lambda r: r["start"])


def event_times(store: Any, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from athanor.tables import EventRow

    query = select(EventRow.kind, EventRow.id, EventRow.sample_id, EventRow.causation_id, EventRow.created_at,
                   EventRow.body).where(EventRow.campaign_id == store.campaign_id,
                                        EventRow.kind.in_(kinds)).order_by(EventRow.seq)
    with store.engine.connect() as connection:
        return [{"kind": k, "id": i, "sample_id": s, "causation_id": c, "t": _seconds(t), "body": b}
                for k, i, s, c, t, b in connection.execute(query)]


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def idle_split(runs: list[dict[str, Any]], names: list[str], ready: dict[str, float], t0: float,
               t1: float) -> dict[str, float]:
    """Instrument-seconds idle in [t0, t1] for one role: while no sample of the role waited (starved)
    and while one did (overhead). A sample waits from `ready[sample]` to its run's start."""
    changes: list[tuple[float, int, int]] = []  # (time, change in idle instruments, change in waiting samples)
    for r in runs:
        changes += [(r["start"], -1, 0), (r["stop"], +1, 0)]
        if r["sample_id"] in ready and ready[r["sample_id"]] < r["start"]:
            changes += [(ready[r["sample_id"]], 0, +1), (r["start"], 0, -1)]
    changes += [(t0, 0, 0), (t1, 0, 0)]  # so the sums reach both ends of the window
    changes.sort()
    idle, waiting, last = len(names), 0, None
    starved = overhead = 0.0
    for t, d_idle, d_wait in changes:
        if last is not None:
            span = overlap(last, t, t0, t1)
            starved += max(0, idle - waiting) * span
            overhead += min(idle, waiting) * span
        idle, waiting, last = idle + d_idle, waiting + d_wait, t
    return {"starved_s": starved, "overhead_s": overhead, "idle_s": starved + overhead}


def gap_parts(runs: list[dict[str, Any]], role_of: dict[str, str], events: list[dict[str, Any]], t0: float,
              t1: float) -> dict[str, dict[str, float]]:
    """Between two runs of one instrument inside the window: the previous run's stop to the conductor's
    intent for the next (the reply, the result logged, the instrument released and taken again, the
    intent logged) and that intent to the next run's start (the Ray call, the run opened); mean and
    median, ms. Includes waits for work, which are rare before the end (see the idle split)."""
    intent = {(e["sample_id"], e["body"].get("step")): e["t"] for e in events if e["kind"] == "step_intent"}
    parts: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"stop_to_intent": [], "intent_to_start": []})
    by_instrument: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_instrument[r["instrument"]].append(r)
    for name, mine in by_instrument.items():
        for a, b in zip(mine, mine[1:]):
            t = intent.get((b["sample_id"], b["step"]))
            if t is None or a["stop"] < t0 or b["start"] > t1 or not a["stop"] <= t <= b["start"]:
                continue
            parts[role_of.get(name, "?")]["stop_to_intent"].append(t - a["stop"])
            parts[role_of.get(name, "?")]["intent_to_start"].append(b["start"] - t)
    return {role: {f"{k}_{stat}": round(1000 * f(v), 1) for k, v in p.items() if v
                   for stat, f in (("mean", statistics.mean), ("median", statistics.median))}
            for role, p in parts.items()}


def analyse(store: Any, spec: Any) -> dict[str, Any]:
    runs = instrument_runs(store)
    batch_of = {s["id"]: s["batch"] for s in store.samples()}
    names = {role: [i.name for i in spec.instruments if i.role == role] for role in ("synthesis", "characterization")}
    role_of = {n: role for role, ns in names.items() for n in ns}
    synth = [r for r in runs if role_of.get(r["instrument"]) == "synthesis"]
    chars = [r for r in runs if role_of.get(r["instrument"]) == "characterization"]
    first_batch = min(batch_of.values(), default=0)  # the conductor numbers batches from 0
    second = [r["start"] for r in synth if batch_of.get(r["sample_id"], first_batch) > first_batch]
    if not synth or not chars or not second:
        raise SystemExit(f"too few runs to judge: {len(synth)} syntheses, {len(chars)} characterizations, "
                         f"{len(second)} after the first batch (raise --samples above --batch-size)")
    first, t0, t1 = synth[0]["start"], min(second), max(r["stop"] for r in chars)
    window = t1 - t0
    role_end = {"synthesis": max(r["stop"] for r in synth), "characterization": t1}

    per: dict[str, dict[str, Any]] = {}
    for name in [*names["synthesis"], *names["characterization"]]:
        mine = [r for r in runs if r["instrument"] == name]
        durations = [r["stop"] - r["start"] for r in mine]
        in_window = sum(overlap(r["start"], r["stop"], t0, t1) for r in mine)
        own_end = role_end[role_of[name]]  # the role's last stop: without the pipeline's drain
        in_own = sum(overlap(r["start"], r["stop"], t0, own_end) for r in mine)
        gaps = [b["start"] - a["stop"] for a, b in zip(mine, mine[1:]) if b["start"] >= t0 and a["stop"] <= t1]
        per[name] = {"role": role_of[name], "runs": len(mine), "busy_s": sum(durations),
                     "busy_in_window_s": in_window, "utilization": in_window / window if window > 0 else 0.0,
                     "utilization_own_span": in_own / (own_end - t0) if own_end > t0 else 0.0,
                     "median_run_s": statistics.median(durations) if durations else None,
                     "median_gap_s": statistics.median(gaps) if gaps else None,
                     "max_gap_s": max(gaps) if gaps else None}

    events = event_times(store, ("design_request", "design_proposal", "synthesis_recipe", "synthesis_result",
                                 "campaign_event", "step_intent"))
    requests = {e["id"]: e for e in events if e["kind"] == "design_request"}
    designs = []
    for e in events:
        if e["kind"] == "design_proposal" and e["causation_id"] in requests:
            request = requests[e["causation_id"]]
            rationale = (e["body"].get("candidates") or [{}])[0].get("rationale") or ""
            designs.append({"batch": request["body"].get("batch"), "n": request["body"].get("n"),
                            "requested": request["t"], "proposed": e["t"], "s": e["t"] - request["t"],
                            "model": "space-filling" if not rationale.startswith("qLog") else rationale.split()[0]})
    recipe_at = {e["sample_id"]: e["t"] for e in events if e["kind"] == "synthesis_recipe"}
    synthesized_at = {e["sample_id"]: e["t"] for e in events if e["kind"] == "synthesis_result"}
    last_start = synth[-1]["start"]  # after it no synthesis is left: the budget is spent
    idle = {"synthesis": idle_split(synth, names["synthesis"], recipe_at, t0, t1),
            "characterization": idle_split(chars, names["characterization"], synthesized_at, t0, t1)}
    idle_before_end = {
        "synthesis": idle_split(synth, names["synthesis"], recipe_at, t0, last_start),
        "characterization": idle_split(chars, names["characterization"], synthesized_at, t0, last_start)}
    gaps = gap_parts(runs, role_of, events, t0, t1)
    campaign = [e for e in events if e["kind"] == "campaign_event"]
    started = next((e["t"] for e in campaign if e["body"].get("event") in ("started", "resumed")), None)
    ended = next((e["t"] for e in reversed(campaign) if e["body"].get("event") == "ended"), None)

    total_busy = sum(p["busy_s"] for p in per.values())
    ideal = total_busy / len(per)
    makespan = t1 - first
    step = statistics.median(r["stop"] - r["start"] for r in synth)
    bayesian = [d["s"] for d in designs if d["model"] != "space-filling"]
    return {
        "window": {"t0": t0, "t1": t1, "s": window, "from": "the first synthesis start of a sample of the second batch",
                   "to": "the last characterization stop", "starts_after_first_start_s": t0 - first},
        "instruments": per,
        "min_utilization": min(p["utilization"] for p in per.values()),
        "min_utilization_own_span": min(p["utilization_own_span"] for p in per.values()),
        "drain_s": t1 - role_end["synthesis"],
        "makespan_s": makespan, "ideal_s": ideal, "makespan_over_ideal": makespan / ideal if ideal else None,
        "pipeline_bound_s": ideal + step, "campaign_wall_s": (ended - started) if started and ended else None,
        "total_instrument_s": total_busy,
        "gap_parts_ms": gaps,
        "idle_split": idle, "idle_split_before_last_synthesis_start": idle_before_end,
        "last_synthesis_start_before_end_s": t1 - last_start,
        "designs": designs,
        "design_s": {"bayesian_n": len(bayesian),
                     "bayesian_median": statistics.median(bayesian) if bayesian else None,
                     "bayesian_min": min(bayesian) if bayesian else None,
                     "bayesian_max": max(bayesian) if bayesian else None,
                     "all_median": statistics.median(d["s"] for d in designs) if designs else None},
        "samples": len(batch_of), "runs": {"synthesis": len(synth), "characterization": len(chars)},
    }


# --- the report ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """flat_cost.py's description of the machine, plus its memory, uncommitted changes, Ray and torch."""
    try:
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        dirty = None
    try:
        memory_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    import ray
    import torch

    return {**flat_cost_machine(), "memory_gib": memory_gib, "dirty": dirty, "ray": ray.__version__,
            "torch": torch.__version__}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    a, m, p = report["analysis"], report["machine"], report["parameters"]
    w = a["window"]
    met = a["min_utilization"] >= TARGET
    dirty = " (with uncommitted changes)" if m["dirty"] else ""
    busy = report["cpu"]["machine_busy"]
    pool = f", pool of {p['pool_rows']} rows" if p["pool_rows"] else ""
    lines = [
        "# Instrument pools: utilization with a slow designer",
        "",
        "Written by `benchmarks/instrument_pool.py` (its docstring defines every figure).",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        f"- when: {report['when']}",
        f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}, "
        f"Ray {m['ray']}, torch {m['torch']}; commit {m['commit']}{dirty}",
        f"- load average before / after: {report['load_average']['before']} / {report['load_average']['after']}; "
        f"the machine's CPU busy during the campaign: {_f(busy and 100 * busy, 0, ' %')}",
        f"- campaign: {p['samples']} samples, {p['synthesis']} synthesis + {p['characterization']} characterization "
        f"instruments (simulated, {p['world']} world{pool}), world.latency_s {p['latency_s']:g}, "
        f"batch_size {p['batch_size']}, "
        f"parallel_batches {p['parallel_batches']}, designer bayesian {json.dumps(p['designer_options'])}; "
        f"status {report['status']}",
        "",
        f"Window: {w['from']} to {w['to']}: {w['s']:.2f} s "
        f"(it opens {w['starts_after_first_start_s']:.2f} s after the first synthesis start).",
        "",
        "| instrument | role | runs | median run | busy in window | utilization | utilization, own span | median gap | max gap "
        "| run time, whole campaign | steps handed by the conductor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    held = report.get("steps_handed", {})
    for name, i in a["instruments"].items():
        lines.append(f"| {name} | {i['role']} | {i['runs']} | {_f(i['median_run_s'], 3, ' s')} | "
                     f"{i['busy_in_window_s']:.2f} s | {100 * i['utilization']:.1f} % | "
                     f"{100 * i['utilization_own_span']:.1f} % | "
                     f"{_f(i['median_gap_s'] and 1000 * i['median_gap_s'], 0, ' ms')} | {_f(i['max_gap_s'], 2, ' s')} | "
                     f"{i['busy_s']:.2f} s | {held.get(name, '')} |")
    d = a["design_s"]
    lines += [
        "",
        f"**Minimum utilization: {100 * a['min_utilization']:.1f} %** (target ≥ {100 * TARGET:.0f} %: "
        f"{'met' if met else 'NOT met'}); over each role's own span (the synthesizers' window closing at their "
        f"last stop, {a['drain_s']:.2f} s before the last characterization ends): "
        f"{100 * a['min_utilization_own_span']:.1f} %. *Median gap*: between one run's stop and the same "
        "instrument's next start, inside the window.",
        "",
        "| makespan (first synthesis start → last characterization stop) | ideal (Σ instrument time / "
        f"{len(a['instruments'])}) | makespan / ideal | pipeline bound (ideal + one step) | campaign wall (log) |",
        "|---|---|---|---|---|",
        f"| {a['makespan_s']:.2f} s | {a['ideal_s']:.2f} s | {_f(a['makespan_over_ideal'], 3)} | "
        f"{a['pipeline_bound_s']:.2f} s | {_f(a['campaign_wall_s'], 2, ' s')} |",
        "",
        "Idle instrument-seconds in the window, per role: *starved* = no sample of the role was waiting "
        "(design gate, designer, or the budget spent); *overhead* = a sample was ready but its run had not started "
        "(conductor turnaround, Ray call, run start):",
        "",
        f"| role | starved | overhead | starved before the last synthesis start ({a['last_synthesis_start_before_end_s']:.2f} s "
        "before the end) | overhead before it |",
        "|---|---|---|---|---|",
    ]
    for role, split in a["idle_split"].items():
        early = a["idle_split_before_last_synthesis_start"][role]
        lines.append(f"| {role} | {split['starved_s']:.2f} s | {split['overhead_s']:.2f} s | "
                     f"{early['starved_s']:.2f} s | {early['overhead_s']:.2f} s |")
    lines += ["", "The gap between two runs of one instrument, in parts (ms, mean / median): the run's stop to the "
              "conductor's intent for the next step (reply, result logged, instrument released and taken again, "
              "intent logged), and the intent to the next run's start (Ray call, run opened):", "",
              "| role | stop → intent | intent → start |", "|---|---|---|"]
    for role, g in a["gap_parts_ms"].items():
        lines.append(f"| {role} | {g.get('stop_to_intent_mean')} / {g.get('stop_to_intent_median')} | "
                     f"{g.get('intent_to_start_mean')} / {g.get('intent_to_start_median')} |")
    lines += [
        "",
        f"Proposals (request → proposal): Bayesian median {_f(d['bayesian_median'], 2, ' s')}, "
        f"min {_f(d['bayesian_min'], 2, ' s')}, max {_f(d['bayesian_max'], 2, ' s')} over {d['bayesian_n']}; "
        f"per batch: " + ", ".join(f"{x['batch']}: {x['s']:.2f}" for x in a["designs"]) + " s.",
        "",
        "CPU seconds during the campaign: driver " + _f(report["cpu"]["driver_s"], 1) + ", " + ", ".join(
            f"{k} {_f(v, 1)}" for k, v in report["cpu"]["agents_s"].items()) + ".",
    ]
    if report.get("notes"):
        lines += ["", *report["notes"]]
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any]) -> None:
    a = report["analysis"]
    print(f"window {a['window']['s']:.2f} s (from the second batch's first synthesis start to the last characterization stop)")
    print(f"{'instrument':<10} {'role':<16} {'runs':>4} {'median run':>10} {'busy':>8} {'util':>7} {'own span':>8} "
          f"{'med gap':>8} {'max gap':>8}")
    for name, i in a["instruments"].items():
        print(f"{name:<10} {i['role']:<16} {i['runs']:>4} {_f(i['median_run_s'], 3):>10} {i['busy_in_window_s']:>8.2f} "
              f"{100 * i['utilization']:>6.1f}% {100 * i['utilization_own_span']:>7.1f}% "
              f"{_f(i['median_gap_s'] and 1000 * i['median_gap_s'], 0, 'ms'):>8} "
              f"{_f(i['max_gap_s'], 2):>8}")
    print(f"min utilization {100 * a['min_utilization']:.1f} % (target >= {100 * TARGET:.0f} %: "
          f"{'met' if a['min_utilization'] >= TARGET else 'NOT met'}); over each role's own span "
          f"{100 * a['min_utilization_own_span']:.1f} % (the synthesizers' drain: {a['drain_s']:.2f} s)")
    print(f"makespan {a['makespan_s']:.2f} s, ideal {a['ideal_s']:.2f} s, ratio {_f(a['makespan_over_ideal'], 3)}, "
          f"pipeline bound {a['pipeline_bound_s']:.2f} s, campaign wall {_f(a['campaign_wall_s'])} s")
    for role, split in a["idle_split"].items():
        early = a["idle_split_before_last_synthesis_start"][role]
        print(f"idle {role}: starved {split['starved_s']:.2f} s, overhead {split['overhead_s']:.2f} s (instrument-seconds); "
              f"before the last synthesis start: starved {early['starved_s']:.2f} s, overhead {early['overhead_s']:.2f} s")
    for role, g in a["gap_parts_ms"].items():
        print(f"gap {role}: stop -> intent {g.get('stop_to_intent_mean')} / {g.get('stop_to_intent_median')} ms, "
              f"intent -> start {g.get('intent_to_start_mean')} / {g.get('intent_to_start_median')} ms (mean / median)")
    d = a["design_s"]
    print(f"Bayesian proposals: median {_f(d['bayesian_median'])} s, min {_f(d['bayesian_min'])} s, "
          f"max {_f(d['bayesian_max'])} s over {d['bayesian_n']}")
    print(f"CPU s: driver {_f(report['cpu']['driver_s'], 1)}, "
          + ", ".join(f"{k} {_f(v, 1)}" for k, v in report["cpu"]["agents_s"].items())
          + f"; machine busy {_f(report['cpu']['machine_busy'] and 100 * report['cpu']['machine_busy'], 0)} %, "
          f"load {report['load_average']['before']} -> {report['load_average']['after']}")


# --- main ---------------------------------------------------------------------------------------
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", choices=["replay", "alloy"], default="replay",
                        help="replay: a synthetic pool, measuring is a table look-up (default); alloy: the Stoner "
                             "model computed in every measurement, and a designer optimizing over the continuous "
                             "simplex (far slower proposals: see --designer-options)")
    parser.add_argument("--pool-rows", type=int, default=500, help="rows of the replay pool (default 500)")
    parser.add_argument("--samples", type=int, default=240, help="experiments in the campaign (default 240)")
    parser.add_argument("--batch-size", type=int, default=16, help="proposals per design request (default 16)")
    parser.add_argument("--parallel-batches", type=int, default=3, help="batches in flight (default 3)")
    parser.add_argument("--latency-s", type=float, default=0.5, help="instrument time per step (default 0.5)")
    parser.add_argument("--synthesis", type=int, default=4, help="synthesis instruments (default 4)")
    parser.add_argument("--characterization", type=int, default=4, help="characterization instruments (default 4)")
    parser.add_argument("--designer-options", type=json.loads, default=DESIGNER_OPTIONS,
                        help=f"the Bayesian designer's options as JSON (default {json.dumps(DESIGNER_OPTIONS)})")
    parser.add_argument("--noise", type=float, default=0.005, help="relative measurement noise (default 0.005)")
    parser.add_argument("--seed", type=int, default=0, help="the campaigns' seed (default 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-pool",
                        help="where the campaign file, the run folder and instrument_pool.json go (default runs/bench-pool)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "instrument_pool.md",
                        help="the Markdown table (default benchmarks/results/instrument_pool.md)")
    parser.add_argument("--no-results", action="store_true", help="do not write --results")
    parser.add_argument("--force", action="store_true", help="replace a run folder left in --out")
    parser.add_argument("--note", action="append", default=[], help="a line added to the Markdown (repeatable)")
    parser.set_defaults(func=_command)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`athanor bench instrument_pool`."""
    parser = subparsers.add_parser("instrument_pool", help="instrument pools kept busy while a Bayesian designer works",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.samples <= args.batch_size:
        raise SystemExit("--samples must exceed --batch-size: the window opens with the second batch")
    if args.world == "replay" and args.pool_rows < args.samples + args.batch_size * args.parallel_batches:
        raise SystemExit(f"--pool-rows {args.pool_rows} is too few for {args.samples} samples")
    out: Path = args.out
    run_dir = out / "run"
    if run_dir.exists():
        if not args.force:
            raise SystemExit(f"{run_dir} exists: pass --force to replace it, or choose another --out")
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "campaign.yaml"
    pool = None
    if args.world == "replay":
        pool = out / "pool.csv"
        write_pool(pool, args.pool_rows, args.seed)
    config.write_text(campaign_yaml(args.world, pool, args.samples, args.batch_size, args.parallel_batches,
                                    args.latency_s, args.synthesis, args.characterization, args.designer_options,
                                    args.seed, args.noise))
    info = machine()
    print(f"instrument pool: {args.samples} samples, {args.synthesis}+{args.characterization} instruments at "
          f"{args.latency_s:g} s, batch {args.batch_size} x {args.parallel_batches} in flight, "
          f"{info['cores']} cores, commit {info['commit']}", flush=True)
    load_before = _loadavg()
    seen = {"finished": -1}
    start = time.perf_counter()

    def progress(counts: dict[str, int]) -> None:
        finished = counts.get("learned", 0) + counts.get("failed", 0)
        if finished // 40 != seen["finished"] // 40:
            print(f"  {finished:>5} finished  {time.perf_counter() - start:7.1f} s", flush=True)
        seen["finished"] = finished

    result = run_campaign(config, run_dir, progress)
    load_after = _loadavg()
    store, spec = result["store"], result["spec"]
    analysis = analyse(store, spec)
    store.close()
    command = " ".join(["python", "-m", "benchmarks.instrument_pool", *sys.argv[1:]]) \
        if Path(sys.argv[0]).name == "instrument_pool.py" else " ".join(["athanor", *sys.argv[1:]])
    report = {
        "command": command,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "parameters": {"world": args.world, "pool_rows": args.pool_rows if args.world == "replay" else None,
                       "samples": args.samples, "batch_size": args.batch_size,
                       "parallel_batches": args.parallel_batches, "latency_s": args.latency_s,
                       "synthesis": args.synthesis, "characterization": args.characterization,
                       "designer_options": args.designer_options, "noise": args.noise, "seed": args.seed},
        "status": result.get("status"),
        "ray_and_agents_start_s": round(result.get("start_s", 0.0), 2),
        "conductor_run_s": round(result.get("conductor_s", 0.0), 2),
        "steps_handed": result.get("steps_handed", {}),
        "cpu": {"driver_s": result.get("driver_cpu_s"), "agents_s": result.get("agent_cpu_s", {}),
                "machine_busy": result.get("machine_busy")},
        "load_average": {"before": load_before, "after": load_after},
        "analysis": analysis,
        "notes": list(args.note),
    }
    (out / "instrument_pool.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out / 'instrument_pool.json'}")
    if not args.no_results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(markdown(report))
        print(f"wrote {args.results}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="instrument_pool.py", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args()
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
