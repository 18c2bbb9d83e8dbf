"""Designers compared on one campaign at an equal experiment budget (issue 6).

    athanor bench designers --config configs/alloy_design.yaml --budget 16 --repeats 10 \\
        --designers gradient,bayesian,random,oracle --out benchmarks/results/designers/alloy_design

Designers are strategy names; `oracle` is the gradient designer given the world's own model (see
`designer_of`): it shows what a perfect model would buy, and no lab has one.

Each repeat runs the campaign's loop in this process, without Ray. The campaign's world and
strategy are built as the agents build them. The loop is: propose a batch, then synthesize and
measure each candidate, with noise and faults seeded by the repeat's seed and the sample. Repeat r
uses seed `--seed + r` for every designer.

Success means every criterion of the campaign is met by one measured sample:
- target objectives are within their tolerance;
- outcome constraints hold;
- maximize and minimize objectives that state a `tolerance` are within it of the world's optimum
  (one without a tolerance is a preference that steers the designer, not a criterion).

The optimum is given as `--optimum NAME=VALUE`. For a world with a differentiable model it can be
found with `--optimum NAME=search`, which runs multi-start projected gradient ascent on that model.

Writes OUT/bench.json:
    {"config", "budget", "repeats", "designers": {NAME: {"success_rate",
      "experiments_to_success_median", "candidates_per_s", "candidate_success_rate", "valid_rate",
      "distinct_candidates_per_proposal", ...}}}
`success_rate` is the share of repeats that met every criterion within the budget;
`candidate_success_rate` the share of all proposed candidates that did (SMOACS's measure);
`valid_rate` the share the world could make at all (a charge-neutral perovskite, say);
`distinct_candidates_per_proposal` how many distinct candidates a proposal produced: for the gradient
designer the distinct decodes of its optimized batch, for the others the distinct ones returned.
`candidates_per_s` is the number of candidates a strategy optimized per second of proposal time,
over all proposals. It uses the count in the strategy's `last_timing` where it keeps one (the
gradient designer); otherwise it counts the candidates it returned. Success is judged on the world's noiseless truth
for the sample where the world offers `evaluate`, otherwise on the measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from athanor import registry
from athanor.agents.designer import make_strategy
from athanor.errors import AthanorError
from athanor.objectives import feasible
from athanor.planners.base import Observation, input_key
from athanor.planners.optim import project_to_simplex
from athanor.simulators.base import InstrumentFault
from athanor.spec import Campaign, DesignerSpec, load_campaign


def search_optimum(spec: Campaign, name: str, starts: int = 12, steps: int = 40, lr: float = 0.05) -> float:
    """The best value of `name` over the composition space, by projected gradient ascent from
    several starts on the world's own differentiable model."""
    world = registry.make_world(spec)
    if spec.space.composition is None or not hasattr(world, "differentiable_model"):
        raise AthanorError(f"--optimum {name}=search needs a composition space and a world with a differentiable model")
    elements = list(spec.space.composition.elements)
    low, high = (torch.tensor(b, dtype=torch.double) for b in zip(*spec.space.composition.elements.values()))
    model = world.differentiable_model(elements)
    sign = -1.0 if next(o for o in spec.objectives if o.name == name).direction == "minimize" else 1.0
    x = project_to_simplex(torch.as_tensor(np.random.default_rng(0).dirichlet(np.ones(len(elements)), starts)),
                           low, high)
    best = -np.inf
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        value = sign * model(x)[name]
        best = max(best, float(value.detach().max()))
        (gradient,) = torch.autograd.grad(value.sum(), x)
        x = project_to_simplex(x + lr * gradient, low, high)
    return sign * max(best, float((sign * model(x.detach())[name]).max()))


def success(values: dict[str, float], spec: Campaign, optimum: dict[str, float]) -> bool:
    if not values or not feasible(values, spec.outcome_constraints):
        return False
    for o in spec.objectives:
        v = values.get(o.name)
        if v is None:
            return False
        if o.direction == "target":
            if abs(v - o.target) > o.tolerance:
                return False
        elif o.tolerance is not None:  # maximize/minimize without a tolerance: a preference, not a criterion
            best, tolerance = optimum.get(o.name), o.tolerance
            if best is None:
                raise AthanorError(f"objective {o.name!r}: success needs its tolerance in the campaign file "
                                   f"and --optimum {o.name}=VALUE|search")
            if (v < best - tolerance) if o.direction == "maximize" else (v > best + tolerance):
                return False
    return True


ORACLE = {"predictor": "world", "n_candidates": 8, "steps": 15, "rounds": 1, "lr": 0.2}


def designer_of(spec: Campaign, name: str) -> tuple[str, dict[str, Any]]:
    """The strategy and options a designer name stands for. The campaign's own strategy keeps its
    options. `oracle` is the gradient designer descending the world's own model (the truth that
    judges success): a bound no lab can reach, with few starts and steps since the truth is costly."""
    if name == "oracle":
        return "gradient", {**{k: v for k, v in spec.designer.options.items() if k != "prior"}, **ORACLE}
    return name, dict(spec.designer.options) if name == spec.designer.strategy else {}


def run_one(spec: Campaign, budget: int, optimum: dict[str, float]) -> dict[str, Any]:
    world = registry.make_world(spec)
    strategy = make_strategy(spec)
    history: list[Observation] = []
    reached, latencies, counts, distinct = None, [], [], []
    judged = {"proposed": 0, "valid": 0, "succeeded": 0}
    while len(history) < budget:
        n = min(spec.batch_size, budget - len(history))
        if hasattr(strategy, "last_timing"):
            strategy.last_timing = {}  # so a fallback proposal is not credited with the previous one's count
        start = time.perf_counter()
        candidates = strategy.propose(history, n, [])
        elapsed = time.perf_counter() - start
        if not candidates:
            break
        latencies.append(elapsed)
        timing = getattr(strategy, "last_timing", None) or {}
        counts.append(timing.get("candidates") or len(candidates))
        distinct.append(timing.get("distinct") or len({input_key(c.inputs) for c in candidates}))
        for c in candidates:
            judged["proposed"] += 1
            sample = f"S{len(history) + 1:04d}"
            try:
                product = world.synthesize({"inputs": c.inputs, "pool_index": c.pool_index}, key=f"{sample}:synthesis")
                values = world.measure(product, "probe", key=f"{sample}:characterization")
                # Judged on the truth where the world can say it, so measurement noise neither makes
                # nor breaks a success.
                truth = world.evaluate(*world.split(c.inputs)) if hasattr(world, "evaluate") else values
            except (InstrumentFault, AthanorError):  # a failed sample, as in a campaign
                history.append(Observation(inputs=c.inputs, failed=True, pool_index=c.pool_index))
                continue
            history.append(Observation(inputs=c.inputs, values=values, pool_index=c.pool_index))
            judged["valid"] += 1
            if success(truth, spec, optimum):
                judged["succeeded"] += 1
                reached = reached or len(history)
    return {"experiments_to_success": reached, "latency_s": latencies, "candidates": counts,
            "distinct": distinct, **judged,
            "best": max((o.values.get(spec.objectives[0].name, -np.inf) for o in history if not o.failed), default=None)}


def run_benchmark(config: str | Path, budget: int, repeats: int, designers: Sequence[str],
                  optimum: dict[str, float | str], seed: int = 0, out: str | Path | None = None,
                  log: Any = None) -> dict[str, Any]:
    spec = load_campaign(config)
    resolved = {k: (search_optimum(spec, k) if v == "search" else float(v)) for k, v in optimum.items()}
    result: dict[str, Any] = {"config": str(config), "budget": budget, "repeats": repeats, "seed": seed,
                              "optimum": resolved, "designers": {}}
    for name in designers:
        strategy, options = designer_of(spec, name)
        runs = []
        for r in range(repeats):
            run_spec = spec.model_copy(update={"seed": seed + r, "designer": DesignerSpec(strategy=strategy, options=options)})
            runs.append(run_one(run_spec, budget, resolved))
            if log:
                log(f"{name}: repeat {r + 1}/{repeats}, success after {runs[-1]['experiments_to_success']} "
                    f"(best {runs[-1]['best']})")
        hits = [x["experiments_to_success"] for x in runs if x["experiments_to_success"] is not None]
        result["designers"][name] = {
            "success_rate": len(hits) / repeats,
            "experiments_to_success_median": statistics.median(hits) if hits else None,
            "candidates_per_s": sum(sum(x["candidates"]) for x in runs) / max(sum(sum(x["latency_s"]) for x in runs), 1e-9),
            "latency_s_median": statistics.median([v for x in runs for v in x["latency_s"]] or [0.0]),
            # SMOACS's success rate: the share of proposed candidates that meet every criterion.
            "candidate_success_rate": sum(x["succeeded"] for x in runs) / max(sum(x["proposed"] for x in runs), 1),
            "valid_rate": sum(x["valid"] for x in runs) / max(sum(x["proposed"] for x in runs), 1),
            "distinct_candidates_per_proposal": statistics.mean([v for x in runs for v in x["distinct"]] or [0]),
            "best": [x["best"] for x in runs],
            "experiments_to_success": [x["experiments_to_success"] for x in runs],
        }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench.json").write_text(json.dumps(result, indent=2))
    return result


def _optimum(pairs: list[str]) -> dict[str, float | str]:
    parsed: dict[str, float | str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise AthanorError(f"--optimum {pair!r}: expected NAME=VALUE or NAME=search")
        parsed[name] = value if value == "search" else float(value)
    return parsed


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the campaign file whose design problem is compared")
    parser.add_argument("--budget", type=int, required=True, help="experiments per campaign")
    parser.add_argument("--repeats", type=int, default=5, help="campaigns per designer, seeds seed..seed+repeats-1 "
                        "(default 5)")
    parser.add_argument("--designers", default="gradient,bayesian,random", type=lambda s: s.split(","),
                        help="comma-separated strategies to compare (default gradient,bayesian,random)")
    parser.add_argument("--optimum", action="append", default=[], metavar="NAME=VALUE|search",
                        help="the world's optimum of an objective (success: within its tolerance of it); 'search' finds it by "
                        "gradient ascent on the world's differentiable model (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repeat (default 0)")
    parser.add_argument("--out", required=True, help="folder for bench.json and the plots")
    parser.set_defaults(func=_command)


def _command(args: argparse.Namespace) -> int:
    if args.budget < 1 or args.repeats < 1:
        raise AthanorError("--budget and --repeats must be at least 1")
    result = run_benchmark(args.config, args.budget, args.repeats, args.designers, _optimum(args.optimum),
                           args.seed, args.out, log=lambda line: print(line, file=sys.stderr, flush=True))
    for name, entry in result["designers"].items():
        print(f"{name:>10}: success {entry['success_rate']:.0%} of repeats, {entry['candidate_success_rate']:.0%} "
              f"of candidates, median experiments to success {entry['experiments_to_success_median']}, "
              f"{entry['candidates_per_s']:.3g} candidates/s")
    print(f"wrote {Path(args.out) / 'bench.json'}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("designers", help="designers compared on one campaign at an equal budget",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return parser


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="designers.py", description=__doc__.splitlines()[0])
    _add_arguments(cli)
    arguments = cli.parse_args()
    try:
        sys.exit(arguments.func(arguments))
    except AthanorError as exc:
        print(f"designers.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
