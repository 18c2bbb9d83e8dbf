"""The alloy world's Slater–Pauling curve against experiment, and the world's cost per call.

    python benchmarks/alloy_curve.py

Writes benchmarks/results/slater_pauling.png (moment against average atomic number along the
Fe–Co, Co–Ni, Fe–Ni and Ni–Cu lines, with the experimental points of data/alloys/moments.csv)
and benchmarks/results/alloy.json (the curve, the table's errors, the cost per call).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pymatgen.core import Composition  # noqa: E402

from athanor.simulators.alloy import AlloyWorld  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
LINES = [("Fe", "Co"), ("Co", "Ni"), ("Fe", "Ni"), ("Ni", "Cu"), ("Cr", "Fe")]


def main() -> None:
    world = AlloyWorld()
    curves = {}
    for a, b in LINES:
        points = []
        for x in np.linspace(0.0, 1.0, 41):
            state = world.evaluate({a: 1 - x, b: x}, {})
            points.append({"x": float(x), "Z": state["average_atomic_number"], "moment": state["magnetic_moment"],
                           "structure": state["structure"]})
        curves[f"{a}-{b}"] = points
    table = pd.read_csv(ROOT / "data" / "alloys" / "moments.csv")
    rows = []
    for _, row in table.iterrows():
        amounts = {str(k): v for k, v in Composition(row.alloy).get_el_amt_dict().items()}
        state = world.evaluate(amounts, {})
        rows.append({"alloy": row.alloy, "Z": state["average_atomic_number"], "experiment": row.moment_muB,
                     "model": round(state["magnetic_moment"], 3), "structure": state["structure"],
                     "error": round(state["magnetic_moment"] - row.moment_muB, 3)})

    def timed(call, repeats=20):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    cost = {"evaluate_s": timed(lambda: world.evaluate({"Fe": 0.7, "Co": 0.3}, {})),
            "evaluate_fixed_structure_s": timed(lambda: world.evaluate({"Fe": 0.7, "Co": 0.3}, {"structure": "bcc"})),
            "moment_and_gradient_s": timed(lambda: world.moment_and_gradient({"Fe": 0.7, "Co": 0.3}))}
    fe_co = curves["Fe-Co"]
    peak = max(fe_co, key=lambda p: p["moment"])
    errors = np.array([r["error"] for r in rows])
    result = {"peak": peak, "table": rows, "max_abs_error": float(np.abs(errors).max()),
              "rms_error": float(np.sqrt(np.mean(errors**2))), "cost": cost, "curves": curves}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "alloy.json").write_text(json.dumps(result, indent=1))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in curves.items():
        ax.plot([p["Z"] for p in points], [p["moment"] for p in points], label=f"{name} (model)")
    ax.scatter([r["Z"] for r in rows], [r["experiment"] for r in rows], color="k", zorder=3, label="experiment")
    ax.set_xlabel("average atomic number")
    ax.set_ylabel("mean moment (μB / atom)")
    ax.set_title("Alloy world: rigid-band Stoner model vs the Slater–Pauling curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "slater_pauling.png", dpi=120)
    print(f"peak: Z = {peak['Z']:.2f}, {peak['moment']:.2f} μB ({peak['structure']}); "
          f"table: max |error| {result['max_abs_error']:.3f} μB, rms {result['rms_error']:.3f} μB")
    print("| alloy | Z | experiment μB | model μB | structure | error |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['alloy']} | {r['Z']:.1f} | {r['experiment']:.3f} | {r['model']:.3f} | {r['structure']} | {r['error']:+.3f} |")
    print("cost per call (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
