"""CHGNet lattice parameters of the `perovskite` world against experiment, and the world's cost.

    python benchmarks/perovskite_lattice.py [--repeats 5] [--out benchmarks/results/perovskite_lattice]

For every compound of data/perovskites/cubic_lattice.csv: the world's `lattice_a` (cubic 5-atom cell
relaxed by CHGNet) against the experimental (pseudo-)cubic lattice parameter. Cost per call:
- cold: `evaluate` with an empty cache (a fresh cache folder per compound, CHGNet already loaded):
  the perovskite and all its binaries relaxed;
- cached: `evaluate` again in a new world with the in-process memory cleared, so the result is read
  from disk (median of --repeats);
- the one-off CHGNet load of the process is reported on its own;
- mixed A sites (MIXED, 2x2x2 supercell of 40 atoms, no experiment compared): cold and cached cost.
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from athanor.simulators import chgnet_cache
from athanor.simulators.perovskite import PerovskiteWorld

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "data" / "perovskites" / "cubic_lattice.csv"
MIXED = ["Sr0.5Ba0.5TiO3", "Sr0.375Ba0.5Ca0.125TiO3"]


def amounts(formula: str) -> dict[str, float]:
    from pymatgen.core import Composition

    return {str(el): float(n) for el, n in Composition(formula).get_el_amt_dict().items()}


def cost(formula: str, folder: Path, repeats: int) -> tuple[dict, float, int, float]:
    """The result, cold seconds (empty cache), relaxations made, median cached seconds (from disk)."""
    relaxes = chgnet_cache.calls["relax"]
    start = time.perf_counter()
    truth = PerovskiteWorld(cache_dir=str(folder)).evaluate(amounts(formula), {})
    cold = time.perf_counter() - start
    relaxes = chgnet_cache.calls["relax"] - relaxes
    cached = []
    for _ in range(repeats):
        chgnet_cache.clear_memory()
        start = time.perf_counter()
        again = PerovskiteWorld(cache_dir=str(folder)).evaluate(amounts(formula), {})
        cached.append(time.perf_counter() - start)
        assert again == truth
    return truth, cold, relaxes, statistics.median(cached)


def run(repeats: int) -> dict:
    rows = list(csv.DictReader(TABLE.open()))
    start = time.perf_counter()
    chgnet_cache.optimizer()
    load_s = time.perf_counter() - start
    results, mixed = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for row in rows:
            truth, cold, relaxes, cached = cost(row["compound"], Path(scratch) / row["compound"], repeats)
            a_exp = float(row["a_exp_angstrom"])
            error = 100 * (truth["lattice_a"] - a_exp) / a_exp
            results.append({"compound": row["compound"], "kind": row["kind"], "a_exp": a_exp,
                            "a_chgnet": round(truth["lattice_a"], 4), "error_pct": round(error, 2),
                            "tolerance_factor": round(truth["tolerance_factor"], 4),
                            "reaction_energy": round(truth["reaction_energy"], 4),
                            "cold_s": round(cold, 2), "relaxations": relaxes,
                            "cached_s": round(cached, 5)})
            print(f"{row['compound']:8s} exp {a_exp:.3f}  CHGNet {truth['lattice_a']:.3f}  {error:+.2f} %  "
                  f"cold {cold:.1f} s  cached {1e3 * cached:.1f} ms", flush=True)
        for formula in MIXED:
            truth, cold, relaxes, cached = cost(formula, Path(scratch) / formula, repeats)
            mixed.append({"composition": formula, "simulated": truth["simulated"], "atoms": truth["cell"]["atoms"],
                          "a_chgnet": round(truth["lattice_a"], 4), "cold_s": round(cold, 2),
                          "relaxations": relaxes, "cached_s": round(cached, 5)})
            print(f"{formula}: a {truth['lattice_a']:.3f}  cold {cold:.1f} s  cached {1e3 * cached:.1f} ms", flush=True)
    errors = [r["error_pct"] for r in results]
    cubic = [r["error_pct"] for r in results if r["kind"] != "pseudo-cubic"]
    return {
        "benchmark": "perovskite_lattice",
        "reference": str(TABLE.relative_to(ROOT)),
        "method": "PerovskiteWorld defaults: 5-atom Pm-3m cell, CHGNet relaxation of atoms and cell "
                  "(FIRE, UnitCellFilter, fmax 0.02 eV/A, 300 steps)",
        "environment": {"chgnet": version("chgnet"), "torch": version("torch"), "python": platform.python_version(),
                        "machine": platform.machine(),
                        "torch_threads": int(os.environ.get("ATHANOR_TORCH_THREADS", "1"))},
        "rows": results,
        "mixed": mixed,
        "summary": {
            "compounds": len(results),
            "mean_abs_error_pct": round(statistics.mean(abs(e) for e in errors), 2),
            "max_abs_error_pct": round(max(abs(e) for e in errors), 2),
            "mean_signed_error_pct": round(statistics.mean(errors), 2),
            "cubic_only_mean_abs_error_pct": round(statistics.mean(abs(e) for e in cubic), 2),
            "cubic_only_max_abs_error_pct": round(max(abs(e) for e in cubic), 2),
            "chgnet_load_s": round(load_s, 2),
            "cold_s_median": round(statistics.median(r["cold_s"] for r in results), 2),
            "cold_s_max": round(max(r["cold_s"] for r in results), 2),
            "cached_s_median": round(statistics.median(r["cached_s"] for r in results), 5),
        },
    }


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = ["# Perovskite world: CHGNet lattice parameter against experiment", "",
             f"{report['method']}; reference {report['reference']}. "
             f"CHGNet {report['environment']['chgnet']}, torch {report['environment']['torch']}.", "",
             "| compound | kind | experiment (Å) | CHGNet (Å) | error (%) | tolerance factor | "
             "reaction energy (eV/atom) | cold (s) | cached (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['compound']} | {r['kind']} | {r['a_exp']:.3f} | {r['a_chgnet']:.3f} | "
                     f"{r['error_pct']:+.2f} | {r['tolerance_factor']:.3f} | {r['reaction_energy']:+.3f} | "
                     f"{r['cold_s']:.1f} | {1e3 * r['cached_s']:.1f} |")
    lines += ["", f"Mean absolute error {s['mean_abs_error_pct']:.2f} %, max {s['max_abs_error_pct']:.2f} %, "
                  f"mean signed {s['mean_signed_error_pct']:+.2f} % ({s['compounds']} compounds); cubic and cubic "
                  f"high-T rows only: mean {s['cubic_only_mean_abs_error_pct']:.2f} %, "
                  f"max {s['cubic_only_max_abs_error_pct']:.2f} %.", "",
              f"Cost per call: cold (empty cache: perovskite and binaries relaxed) median "
              f"{s['cold_s_median']:.1f} s, max {s['cold_s_max']:.1f} s; cached (read from disk) median "
              f"{1e3 * s['cached_s_median']:.1f} ms; CHGNet load once per process {s['chgnet_load_s']:.1f} s. "
              "Timed on a shared 2-core machine, one torch thread.", "",
              "Mixed A sites (ordered 2×2×2 supercell, 40 atoms; cold includes the binaries):", "",
              "| composition | simulated | CHGNet a (Å) | relaxations | cold (s) | cached (ms) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {m['composition']} | {m['simulated']} | {m['a_chgnet']:.3f} | {m['relaxations']} | "
              f"{m['cold_s']:.1f} | {1e3 * m['cached_s']:.1f} |" for m in report["mixed"]]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "perovskite_lattice"))
    args = parser.parse_args()
    report = run(args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
