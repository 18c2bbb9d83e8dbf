"""Proposal latency on a composition simplex: athanor's BoTorch designer against Ax.

    python benchmarks/latency.py [--repeats 5] [--out benchmarks/results/latency.json]

The problem of issue 3: q = 4 proposals after n = 100 measurements, d = 10 elements whose
fractions sum to 1, each within [0, 0.5]. Athanor optimizes on the bounded simplex directly
(projected gradient); Ax gets the standard formulation its users write: nine free fractions, the
tenth derived as 1 − their sum, with linear constraints keeping it within its bounds. Both see the
same 100 points and objective values in each repeat; we time the proposal call only.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from athanor.planners.base import Observation
from athanor.planners.bayesian import BayesianStrategy
from athanor.planners.space import DesignSpace
from athanor.spec import parse_campaign

ROOT = Path(__file__).resolve().parents[1]
ELEMENTS = ["Fe", "Co", "Ni", "Cr", "Mn", "Cu", "Al", "Ti", "V", "Zn"]
HIGH = 0.5


def problem(seed: int) -> tuple[DesignSpace, list, list[dict], np.ndarray]:
    yaml = ("campaign: latency\nspace:\n  composition:\n    elements: {"
            + ", ".join(f"{e}: [0.0, {HIGH}]" for e in ELEMENTS)
            + "}\nobjectives: [{name: y, direction: maximize}]\nbudget: {experiments: 104}\n")
    spec = parse_campaign(yaml)
    space = DesignSpace(spec.space)
    rng = np.random.default_rng(seed)
    points = space.from_unit(rng.random((100, len(ELEMENTS))))
    centre = rng.dirichlet(np.ones(len(ELEMENTS)))
    y = np.array([-np.sum((np.array([p[e] for e in ELEMENTS]) - centre) ** 2) for p in points])
    return space, spec.objectives, points, y


def athanor_latency(seed: int) -> tuple[float, float]:
    space, objectives, points, y = problem(seed)
    history = [Observation(inputs=p, values={"y": float(v)}) for p, v in zip(points, y)]
    strategy = BayesianStrategy(space, objectives, seed=seed)
    start = time.perf_counter()
    proposals = strategy.propose(history, 4, [])
    elapsed = time.perf_counter() - start
    worst = max(abs(sum(c.inputs[e] for e in ELEMENTS) - 1.0) for c in proposals)
    return elapsed, worst


def ax_latency(seed: int) -> tuple[float, float]:
    from ax.api.client import Client
    from ax.api.configs import DerivedParameterConfig, RangeParameterConfig

    logging.getLogger("ax").setLevel(logging.ERROR)
    _, _, points, y = problem(seed)
    free = ELEMENTS[:-1]
    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=[RangeParameterConfig(name=e, bounds=(0.0, HIGH), parameter_type="float") for e in free]
        + [DerivedParameterConfig(name=ELEMENTS[-1], expression_str="1.0 - " + " - ".join(free),
                                  parameter_type="float")],
        parameter_constraints=[" + ".join(free) + " <= 1.0", " + ".join(free) + f" >= {1.0 - HIGH}"],
    )
    client.configure_optimization(objective="y")
    for p, v in zip(points, y):
        index = client.attach_trial(parameters={e: float(p[e]) for e in ELEMENTS})
        client.complete_trial(trial_index=index, raw_data={"y": float(v)})
    start = time.perf_counter()
    trials = client.get_next_trials(max_trials=4)
    elapsed = time.perf_counter() - start
    worst = max(abs(sum(float(t[e]) for e in ELEMENTS) - 1.0) for t in trials.values())
    return elapsed, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--designers", default="athanor,ax")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = parser.parse_args()
    runners = {"athanor": athanor_latency, "ax": ax_latency}
    report: dict = {"problem": "q=4, n=100, d=10 composition simplex, each fraction in [0, 0.5]",
                    "versions": {p: version(p) for p in ("botorch", "torch", "ax-platform")}, "designers": {}}
    for name in args.designers.split(","):
        runs = [runners[name](seed) for seed in range(args.repeats)]
        report["designers"][name] = {"latency_s": [round(t, 3) for t, _ in runs],
                                     "latency_s_median": round(statistics.median(t for t, _ in runs), 3),
                                     "max_abs_sum_error": max(w for _, w in runs)}
        print(name, json.dumps(report["designers"][name]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
