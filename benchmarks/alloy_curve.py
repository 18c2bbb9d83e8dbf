"""The alloy world against experiment: both models, per branch, the structure boundaries, and cost.

    python benchmarks/alloy_curve.py

For the CPA model (the world's default) and the rigid-band model it compares:
- every row of data/alloys/moments.csv, with the errors per branch (Fe–Co, Co–Ni, Fe–Ni, Ni–Cu, Fe–Cr,
  Ni–Cr, Fe–Mn);
- the critical concentrations where ferromagnetism vanishes (Ni–Cu near 55 % Cu, Ni–Cr near 11 % Cr);
- the bcc/fcc boundaries of Fe–Ni (experiment: 30–34 % Ni) and Fe–Co (about 75 % Co);
- the cost of a call (one composition, and per composition in a batch of 32).
Writes benchmarks/results/alloy.json, benchmarks/results/alloy.md and benchmarks/results/slater_pauling.png.
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
import torch  # noqa: E402
from pymatgen.core import Composition  # noqa: E402

from athanor.simulators.alloy import AlloyWorld, composition_vector, shared_cpa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
LINES = [("Fe", "Co"), ("Co", "Ni"), ("Fe", "Ni"), ("Ni", "Cu"), ("Fe", "Cr"), ("Ni", "Cr"), ("Fe", "Mn")]


def branch(amounts: dict[str, float]) -> str:
    elements = sorted(amounts, key=lambda e: "CrMnFeCoNiCu".index(e))
    return "–".join(elements) if len(elements) > 1 else "elements"


def line(world: AlloyWorld, a: str, b: str, points: int = 21) -> list[dict]:
    """Moment and structure along a–b, one batch for the CPA."""
    xs = np.linspace(0.0, 1.0, points)
    if world.model == "cpa":
        c = torch.stack([composition_vector({a: 1 - x, b: x} if 0 < x < 1 else {a if x == 0 else b: 1.0}) for x in xs])
        with torch.no_grad():
            state = shared_cpa().state(c)
        return [{"x": float(x), "moment": float(m), "structure": s}
                for x, m, s in zip(xs, state["moment"], state["structure"])]
    out = []
    for x in xs:
        r = world.evaluate({a: 1 - x, b: x} if 0 < x < 1 else {a if x == 0 else b: 1.0}, {})
        out.append({"x": float(x), "moment": r["magnetic_moment"], "structure": r["structure"]})
    return out


def first(points: list[dict], predicate) -> float | None:
    return next((p["x"] for p in points if predicate(p)), None)


def main() -> None:
    table = pd.read_csv(ROOT / "data" / "alloys" / "moments.csv")
    result: dict = {}
    for model in ("cpa", "rigid_band"):
        world = AlloyWorld(model=model)
        rows = []
        for _, row in table.iterrows():
            amounts = {str(k): v for k, v in Composition(row.alloy).get_el_amt_dict().items()}
            state = world.evaluate(amounts, {})
            rows.append({"alloy": row.alloy, "branch": branch(amounts), "experiment": row.moment_muB,
                         "model": round(state["magnetic_moment"], 3), "moments": state.get("moments"),
                         "structure": state["structure"], "experiment_structure": row.structure,
                         "error": round(state["magnetic_moment"] - row.moment_muB, 3)})
        branches = {}
        for name in dict.fromkeys(r["branch"] for r in rows):
            errors = np.array([r["error"] for r in rows if r["branch"] == name])
            branches[name] = {"rows": len(errors), "rms_error": round(float(np.sqrt(np.mean(errors**2))), 3),
                              "max_abs_error": round(float(np.abs(errors).max()), 3)}
        errors = np.array([r["error"] for r in rows])
        curves = {f"{a}-{b}": line(world, a, b) for a, b in LINES}
        markers = {
            "Ni-Cu critical Cu fraction (experiment ≈ 0.55)": first(curves["Ni-Cu"], lambda p: p["moment"] < 0.02),
            "Ni-Cr critical Cr fraction (experiment ≈ 0.11)": first(curves["Ni-Cr"], lambda p: p["moment"] < 0.02),
            "Fe-Ni first fcc Ni fraction (experiment 0.30–0.34)": first(curves["Fe-Ni"], lambda p: p["structure"] == "fcc"),
            "Fe-Co first fcc Co fraction (experiment ≈ 0.75)": first(curves["Fe-Co"], lambda p: p["structure"] == "fcc"),
            "Fe-Co peak Co fraction (experiment ≈ 0.3)": max(curves["Fe-Co"][:16], key=lambda p: p["moment"])["x"],
        }
        result[model] = {"table": rows, "branches": branches, "markers": markers, "curves": curves,
                         "rms_error": round(float(np.sqrt(np.mean(errors**2))), 3),
                         "max_abs_error": round(float(np.abs(errors).max()), 3)}

    def timed(call, repeats=5):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    world = AlloyWorld()
    batch = torch.zeros(32, 6, dtype=torch.double)  # Cr Mn Fe Co Ni Cu; little Cr and Mn
    batch[:, :5] = torch.tensor(np.random.default_rng(0).dirichlet(np.ones(5), 32) * [0.3, 0.3, 1, 1, 1])
    result["cost_s"] = {
        "evaluate_one": timed(lambda: world.evaluate({"Fe": 0.7, "Co": 0.3}, {})),
        "evaluate_one_five_elements": timed(lambda: world.evaluate({"Fe": 0.5, "Co": 0.1, "Ni": 0.2, "Cr": 0.15, "Mn": 0.05}, {})),
        "moment_and_gradient_one": timed(lambda: world.moment_and_gradient({"Fe": 0.7, "Co": 0.3})),
        "batch_of_32_per_composition": timed(lambda: shared_cpa().state(batch), repeats=2) / 32,
        "rigid_band_evaluate_one": timed(lambda: AlloyWorld(model="rigid_band").evaluate({"Fe": 0.7, "Co": 0.3}, {})),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "alloy.json").write_text(json.dumps(result, indent=1))

    lines = ["# Alloy world against experiment", "", "`python benchmarks/alloy_curve.py`; table: data/alloys/moments.csv.", "",
             "| branch | rows | CPA rms μB | CPA max μB | rigid band rms μB | rigid band max μB |", "|---|---|---|---|---|---|"]
    for name, b in result["cpa"]["branches"].items():
        r = result["rigid_band"]["branches"][name]
        lines.append(f"| {name} | {b['rows']} | {b['rms_error']:.3f} | {b['max_abs_error']:.3f} | {r['rms_error']:.3f} | {r['max_abs_error']:.3f} |")
    lines.append(f"| all | {len(table)} | {result['cpa']['rms_error']:.3f} | {result['cpa']['max_abs_error']:.3f} | "
                 f"{result['rigid_band']['rms_error']:.3f} | {result['rigid_band']['max_abs_error']:.3f} |")
    lines += ["", "| marker | CPA | rigid band |", "|---|---|---|"]
    for name in result["cpa"]["markers"]:
        lines.append(f"| {name} | {result['cpa']['markers'][name]} | {result['rigid_band']['markers'][name]} |")
    lines += ["", "| alloy | experiment μB | CPA μB | CPA per element μB | CPA structure | rigid band μB |", "|---|---|---|---|---|---|"]
    for c, r in zip(result["cpa"]["table"], result["rigid_band"]["table"]):
        per = ", ".join(f"{e} {m:+.2f}" for e, m in (c["moments"] or {}).items())
        lines.append(f"| {c['alloy']} | {c['experiment']:.2f} | {c['model']:.2f} | {per} | {c['structure']} "
                     f"({c['experiment_structure']}) | {r['model']:.2f} |")
    lines += ["", "Cost per call (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in result["cost_s"].items())]
    (OUT / "alloy.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, model in zip(axes, ("cpa", "rigid_band")):
        for name, points in result[model]["curves"].items():
            ax.plot([p["x"] for p in points], [p["moment"] for p in points], label=name)
        ax.set_title(f"{model}: moment along binary lines")
        ax.set_xlabel("fraction of the second element")
    axes[0].set_ylabel("mean moment (μB / atom)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "slater_pauling.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
