"""Orchestration cost: the demo's wall time and the platform's overhead per experiment.

    python benchmarks/orchestration.py [--repeats 3] [--out benchmarks/results/orchestration.json]

Runs the demo campaign (P3HT replay, 30 experiments) as a user would, through the `athanor` command,
timing the whole command (Ray start-up included) and reading the campaign's own wall time from its
summary. Then runs it again with simulated instrument time (`latency_s` per step) to show how much of
the wall time is the platform's: overhead per experiment = (wall − busiest instrument's time) / n.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "p3ht_replay.yaml"


def run(config: Path, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "athanor", "run", str(config), "--out", str(out), "--quiet"],
                   check=True, capture_output=True)
    return time.perf_counter() - start, json.loads((out / "summary.json").read_text())


def with_latency(tmp: Path, latency_s: float) -> Path:
    spec = yaml.safe_load(DEMO.read_text())
    spec["space"]["pool"]["dataset"] = str((DEMO.parent / spec["space"]["pool"]["dataset"]).resolve())
    spec["world"]["latency_s"] = latency_s
    path = tmp / f"latency_{latency_s}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.1, help="instrument time per step, s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "orchestration.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for latency, config in [(0.0, DEMO), (args.latency, with_latency(tmp, args.latency))]:
            for i in range(args.repeats):
                command_s, summary = run(config, tmp / f"run-{latency}-{i}")
                rows.append({"latency_s": latency, "command_s": round(command_s, 2),
                             "campaign_wall_s": summary["wall_s"], "n": summary["n_experiments"],
                             "instrument_s": summary["instrument_s"],
                             "overhead_per_experiment_ms": round(summary["overhead_per_experiment_s"] * 1000, 1)})
                print(json.dumps(rows[-1]))
    report = {"config": str(DEMO.relative_to(ROOT)), "runs": rows, "median": {}}
    for latency in sorted({r["latency_s"] for r in rows}):
        sel = [r for r in rows if r["latency_s"] == latency]
        report["median"][str(latency)] = {k: statistics.median(r[k] for r in sel)
                                          for k in ("command_s", "campaign_wall_s", "overhead_per_experiment_ms")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["median"], indent=2))


if __name__ == "__main__":
    main()
