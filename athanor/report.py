"""What a run leaves in its folder: summary.json, results.csv and plots/progress.png."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from athanor.messages import Measurement, SynthesisResult
from athanor.errors import AthanorError
from athanor.objectives import best_sample, expected_best_of_random, utility
from athanor.spec import Campaign
from athanor.store import Store


def results_table(store: Store, spec: Campaign) -> pd.DataFrame:
    rows = []
    outputs = spec.output_names
    for s in store.samples():
        row: dict[str, Any] = {"sample_id": s["id"], "batch": s["batch"], "state": s["state"],
                               "pool_index": s["pool_index"]}
        row.update({name: s["inputs"].get(name) for name in spec.space.input_names})
        row.update({name: s["values"].get(name) for name in outputs})
        row["measured_at"] = s["measured_at"] or ""
        row["error"] = s["error"] or ""
        rows.append(row)
    columns = ["sample_id", "batch", "state", "pool_index", *spec.space.input_names, *outputs, "measured_at", "error"]
    return pd.DataFrame(rows, columns=columns)


def instrument_time(store: Store) -> dict[str, float]:
    busy: dict[str, float] = defaultdict(float)
    for kind in ("synthesis_result", "measurement"):
        for m in store.events(kind=kind):
            assert isinstance(m, (SynthesisResult, Measurement))
            busy[m.instrument] += m.duration_s
    return dict(busy)


def pool_outcomes(spec: Campaign, name: str) -> pd.Series | None:
    """Every outcome a pool space can give for `name`, when its dataset tabulates it (a replayed dataset):
    what the campaign's progress is measured against. None for computed spaces."""
    if spec.space.pool is None:
        return None
    return _pool_column(str(spec.space.pool.dataset), tuple(spec.space.pool.inputs), name)


@lru_cache(maxsize=16)
def _pool_column(dataset: str, inputs: tuple[str, ...], name: str) -> pd.Series | None:
    """Read once per process: `athanor status` and the dashboard summarize often."""
    from athanor.pool import load_pool

    try:
        return load_pool(dataset, list(inputs), [name])[name]
    except AthanorError:
        return None


def references(spec: Campaign, n_measured: int) -> dict[str, dict[str, float]]:
    """For each objective a pool tabulates: the pool's best, and the best random sampling of as many
    rows would be expected to have found (what shows that the designer learned)."""
    found = {}
    for objective in spec.objectives:
        values = pool_outcomes(spec, objective.name) if objective.direction != "target" else None
        if values is None or not n_measured:
            continue
        best = max(values, key=lambda v: utility(v, objective))
        found[objective.name] = {"pool_best": float(best), "pool_rows": len(values),
                                 "random_expected_best": expected_best_of_random(values, objective, [n_measured])[0]}
    return found


def summarize(store: Store, spec: Campaign, status: str) -> dict[str, Any]:
    samples = store.samples()
    best = best_sample(samples, spec.objectives, spec.outcome_constraints)
    wall = store.wall_time_s()
    busy = instrument_time(store)
    n_experiments = sum(s["state"] not in ("proposed", "rejected") for s in samples)
    bottleneck = max(busy.values(), default=0.0)
    return {
        "campaign": spec.campaign,
        "campaign_id": store.campaign_id,
        "status": status,
        "n_experiments": n_experiments,
        "n_measured": sum(bool(s["values"]) for s in samples),
        "n_failed": sum(s["state"] == "failed" for s in samples),
        "n_rejected": sum(s["state"] == "rejected" for s in samples),
        "n_awaiting_approval": sum(s["awaiting_approval"] for s in samples),
        "budget": spec.budget.experiments,
        "best": {"sample_id": best["id"], "inputs": best["inputs"], "objectives": best["values"]} if best else None,
        "reference": references(spec, sum(bool(s["values"]) for s in samples)),
        "wall_s": round(wall, 3),
        "instrument_s": {k: round(v, 3) for k, v in busy.items()},
        # The busiest instrument bounds the wall time; the rest is the platform's own cost.
        "overhead_per_experiment_s": round((wall - bottleneck) / n_experiments, 4) if n_experiments else None,
        "seed": spec.seed,
        "designer": spec.designer.strategy,
        "world": spec.world.kind,
    }


def status_report(store: Store, spec: Campaign) -> dict[str, Any]:
    """`athanor status --json`, and the dashboard's view of one campaign."""
    from athanor.lease import holder
    from athanor.recovery import quarantined

    samples = store.samples()
    events = store.events(kind="campaign_event")
    status = events[-1].status if events and events[-1].event == "ended" else "running or interrupted"
    summary = summarize(store, spec, status)
    controls, asked = store.controls(), store.waiting_reasons()
    return {"campaign": spec.campaign, "campaign_id": store.campaign_id, "status": status,
            "paused": controls["paused"], "batch_size": controls["batch_size"] or spec.batch_size,
            "states": dict(Counter(s["state"] for s in samples)),
            "awaiting_approval": [s["id"] for s in samples if s["awaiting_approval"]],
            "waiting_because": {s["id"]: asked.get(s["id"], "") for s in samples if s["awaiting_approval"]},
            "approvals": store.approvals(), "best": summary["best"], "wall_s": summary["wall_s"],
            "n_experiments": summary["n_experiments"], "budget": summary["budget"],
            "refused_commands": store.refused_commands(), "queued_commands": store.queued_commands(),
            "interrupted": [s["id"] for s in samples if s["interrupted"]],
            "interrupted_because": {s["id"]: s["interrupted"] for s in samples if s["interrupted"]},
            "conductor": holder(store), "quarantined": quarantined(events),
            "instruments": _instruments(spec, events)}


def _instruments(spec: Campaign, events: list[Any]) -> dict[str, dict[str, Any]]:
    """The campaign's instruments; on a lab, the lab's, as they were when it last joined."""
    if spec.lab is None:
        return {i.name: {"role": i.role, "backend": i.backend} for i in spec.instruments}
    joined = next((e for e in reversed(events) if e.event == "lab_joined"), None)
    nodes = joined.detail.get("nodes", {}) if joined is not None else {}
    return {name: {"lab": spec.lab, "node_id": node} for name, node in nodes.items()}


def draw_progress(ax: Any, samples: list[dict[str, Any]], spec: Campaign, objective: Any) -> None:
    """One objective against the experiment number on `ax`: measured values, best so far and, for a
    replayed dataset, random sampling's expected best and the dataset's best."""
    measured = [s for s in samples if s["values"]]
    values = [s["values"][objective.name] for s in measured]
    best, best_so_far = None, []
    for v in values:
        if best is None or utility(v, objective) > utility(best, objective):
            best = v
        best_so_far.append(best)
    x = range(1, len(values) + 1)
    ax.plot(x, values, "o", ms=3, alpha=0.4, label="measured")
    ax.step(x, best_so_far, where="post", lw=2, label=f"best so far ({spec.designer.strategy})")
    pool = pool_outcomes(spec, objective.name) if objective.direction != "target" and values else None
    if pool is not None:
        ax.plot(x, expected_best_of_random(pool, objective, list(x)), "--", color="grey",
                label="random sampling, expected best")
        ax.axhline(max(pool, key=lambda v: utility(v, objective)), ls=":", color="green", lw=1.5,
                   label=f"best of the {len(pool)} rows")
        ax.margins(y=0.1)
    if objective.direction == "target":
        ax.axhspan(objective.target - objective.tolerance, objective.target + objective.tolerance,
                   alpha=0.15, color="green", label="target")
    ax.set_xlabel("experiment")
    ax.set_ylabel(objective.name)
    ax.set_title(f"{spec.campaign}: {objective.direction} {objective.name}", fontsize=9)
    ax.legend(fontsize=7)


def progress_figure(samples: list[dict[str, Any]], spec: Campaign) -> Any:
    """Every objective's panel on a plain matplotlib Figure (no pyplot: no backend chosen or changed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(spec.objectives), 3.6))
    for ax, objective in zip(fig.subplots(1, len(spec.objectives), squeeze=False)[0], spec.objectives):
        draw_progress(ax, samples, spec, objective)
    fig.tight_layout()
    return fig


def plot_progress(samples: list[dict[str, Any]], spec: Campaign, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    progress_figure(samples, spec).savefig(path, dpi=110)


def write_outputs(store: Store, spec: Campaign, out: Path, status: str) -> dict[str, Any]:
    summary = summarize(store, spec, status)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    results_table(store, spec).to_csv(out / "results.csv", index=False)
    plot_progress(store.samples(), spec, out / "plots" / "progress.png")
    return summary


def format_summary(summary: dict[str, Any], waited_s: float | None = None, startup_s: float | None = None) -> str:
    """The table `athanor run` ends with; `waited_s`: how long the command took, `startup_s` of it
    until Ray and the agents were ready (the campaign's own wall time starts after)."""
    lines = [
        ("campaign", summary["campaign"]),
        ("status", summary["status"]),
        ("experiments", f"{summary['n_experiments']} of {summary['budget']} "
                        f"({summary['n_measured']} measured, {summary['n_failed']} failed, "
                        f"{summary['n_rejected']} rejected)"),
        ("wall time", f"{summary['wall_s']:.1f} s" + (
            f" (you waited {waited_s:.1f} s" + (f", {startup_s:.1f} s of it starting Ray and the agents"
                                               if startup_s is not None else "") + ")" if waited_s is not None else "")),
    ]
    if summary["overhead_per_experiment_s"] is not None:
        lines.append(("overhead/experiment", f"{summary['overhead_per_experiment_s'] * 1000:.0f} ms"))
    best = summary["best"]
    if best:
        lines.append(("best sample", best["sample_id"]))
        lines += [(f"  {k}", f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in best["inputs"].items()]
        lines += [(f"  -> {k}", f"{v:.6g}") for k, v in best["objectives"].items()]
        for name, ref in (summary.get("reference") or {}).items():
            lines.append((f"  {name}: best of the {ref['pool_rows']} rows", f"{ref['pool_best']:.6g}"))
            lines.append((f"  {name}: random sampling, expected", f"{ref['random_expected_best']:.6g} after "
                                                                    f"{summary['n_measured']} (see plots/progress.png)"))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


# --- how the CLI and the chat show proposals and decisions -------------------------------------
def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def inputs_text(inputs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in inputs.items())


def decision_line(a: Mapping[str, Any], quote: Callable[[str], str] | None = None) -> str:
    """One operator decision as `athanor status` and the chat show it; `quote` wraps what people wrote
    (the chat fences it for a model)."""
    reason = quote(a["reason"]) if quote else a["reason"]
    verdict = "approved" if a["approved"] else f"rejected ({reason})"
    if a.get("edited_inputs"):
        verdict = f"revised to {inputs_text(a['edited_inputs'])}" + (f" ({reason})" if a["reason"] else "")
    transcript = a.get("transcript") or {}
    said = transcript.get("operator_message")
    link = f" [chat session {transcript.get('session', '?')}: {(quote or repr)(said)}]" if said else ""
    who = a["decided_by"] + ("" if a.get("authenticated") or not a.get("login") or a["login"] == a["decided_by"]
                             else f" (login {a['login']})")
    return f"{a['sample_id']} {verdict} by {who} via {a['channel']} at {a['decided_at']}{link}"


def recipe_lines(recipe: Mapping[str, Any] | None) -> list[str]:
    """A recipe as an operator judges it: reaction, amounts, heating, cost, hazards."""
    if not recipe:
        return ["recipe: not planned yet, so no cost or hazards known"]
    precursors = ", ".join(f"{p['formula']} {p['mass_g']:.3g} g" if "mass_g" in p else str(p.get("formula", p))
                           for p in recipe.get("precursors", []))
    lines = [f"recipe: route {recipe.get('route')}" + (f", {recipe['reaction']}" if recipe.get("reaction") else "")
             + (f"; precursors {precursors}" if precursors else "")]
    heat = [f"{s['temperature_c']:.0f} °C for {s['time_h']:.3g} h in {s['atmosphere']}"
            for s in recipe.get("steps", []) if s.get("action") == "heat"]
    if heat:
        lines.append("heating: " + ", then ".join(heat))
    if recipe.get("cost_usd") is not None:
        lines.append(f"precursor cost ${recipe['cost_usd']:.2f}")
    hazards = {p: f for p, f in (recipe.get("hazards") or {}).items() if f}
    lines.append("hazards: " + ("; ".join(f"{p} ({', '.join(f)})" for p, f in hazards.items()) if hazards
                                else "none flagged" if recipe.get("hazards") else "not assessed by this route"))
    return lines
