"""The designer's benchmark suite (data/suite): development and confirmation halves, one command.

    python benchmarks/suite.py --half confirmation --repeats 5 --budget 60
    python benchmarks/suite.py --half development --designers athanor,botorch --out runs/dev-try

Each dataset runs `optimizers.run_benchmark` (the Liang protocol: pool-based, duplicates averaged,
the same 2 random starting rows for every designer, budget counting them). Text columns are
categorical: they are one-hot encoded once, for every designer alike (into OUT/encoded, not kept
in git). Datasets run in parallel
worker processes (one torch thread each). Writes OUT/<half>/<dataset>/bench.json and, when OUT is
the default, rewrites that half's table between its markers in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
if __package__:  # imported as benchmarks.suite
    from .adapters import BenchError
    from .optimizers import plot, run_benchmark
else:  # run as a script: the sibling modules sit in this file's folder
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adapters import BenchError
    from optimizers import plot, run_benchmark

SUITE = ROOT / "data" / "suite" / "suite.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "suite"
HALVES = ("development", "confirmation")
DEFAULT_DESIGNERS = "athanor,baybe,botorch,random"


@dataclass(frozen=True)
class Dataset:
    name: str
    path: Path
    objective: str
    direction: str
    kind: str
    half: str


def load_suite(path: Path = SUITE) -> dict[str, Dataset]:
    """The manifest, each entry checked: a missing file or column is named before anything runs."""
    raw = yaml.safe_load(path.read_text())
    out = {}
    for name, entry in raw["datasets"].items():
        missing = {"file", "objective", "direction", "half"} - set(entry)
        if missing:
            raise BenchError(f"{path}: dataset {name!r} lacks {', '.join(sorted(missing))}")
        if entry["half"] not in HALVES:
            raise BenchError(f"{path}: dataset {name!r}: half must be one of {HALVES}, not {entry['half']!r}")
        file = (path.parent / entry["file"]).resolve()
        if not file.is_file():
            raise BenchError(f"{path}: dataset {name!r}: no file {file}")
        out[name] = Dataset(name, file, entry["objective"], entry["direction"], entry.get("kind", ""), entry["half"])
    return out


def encode(dataset: Dataset, folder: Path) -> tuple[Path, list[str]]:
    """A numeric copy of the dataset: each text column becomes one 0/1 column per category (sorted;
    an empty cell is the category "(none)"), named COLUMN#k; rows without an objective value are kept
    (the pool loader drops them)."""
    frame = pd.read_csv(dataset.path, encoding="utf-8-sig")
    if dataset.objective not in frame.columns:
        raise BenchError(f"{dataset.path}: no column {dataset.objective!r} (columns: {', '.join(frame.columns)})")
    inputs = [c for c in frame.columns if c != dataset.objective]
    text = [c for c in inputs if not pd.api.types.is_numeric_dtype(frame[c])]
    if not text:
        return dataset.path, inputs
    columns = {}
    for c in inputs:
        if c in text:
            levels = frame[c].fillna("(none)").astype(str)  # an empty cell is a choice too: no ligand, no base
            for k, level in enumerate(sorted(levels.unique())):
                columns[f"{c}#{k}"] = (levels == level).astype(float)
        else:
            columns[c] = frame[c]
    encoded = pd.DataFrame({**columns, dataset.objective: frame[dataset.objective]})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.name}.csv"
    encoded.to_csv(path, index=False)
    return path, [c for c in encoded.columns if c != dataset.objective]


def run_one(dataset: Dataset, designers: str, budget: int, repeats: int, out: Path, seed: int) -> dict[str, Any]:
    """One dataset; designers of an earlier run in the same folder with the same budget, repeats and
    seed (so the same starting rows) are kept beside the new ones."""
    folder = out / dataset.half / dataset.name
    earlier = json.loads((folder / "bench.json").read_text()) if (folder / "bench.json").is_file() else None
    path, inputs = encode(dataset, out / "encoded")
    result = run_benchmark(path, inputs, dataset.objective, dataset.direction, budget, repeats, designers,
                           folder, seed=seed)
    result.update(name=dataset.name, kind=dataset.kind, half=dataset.half, source=str(dataset.path.relative_to(ROOT)))
    if earlier and (earlier["budget"], earlier["repeats"], earlier["seed"]) == (budget, repeats, seed):
        kept = {k: v for k, v in earlier["designers"].items() if k not in result["designers"]}
        result["designers"] = {**kept, **result["designers"]}
    (folder / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, folder / "top5.png")
    return result


def cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['ef_mean']:.2f} / {entry['latency_s_median']:.2f}"


def table(results: Sequence[dict[str, Any]]) -> str:
    """One row per dataset: each designer's mean EF / median seconds per proposal; the best EF bold."""
    names = sorted({d for r in results for d in r["designers"]}, key=lambda n: (n == "random", "@" in n, n))
    lines = ["| dataset | kind | pool | dims | budget | repeats | " + " | ".join(f"{n} EF / s" for n in names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for r in results:
        best = max(d["ef_mean"] for d in r["designers"].values())
        cells = [f"**{cell(r['designers'][n])}**" if n in r["designers"] and r["designers"][n]["ef_mean"] == best
                 else cell(r["designers"].get(n)) for n in names]
        lines.append(f"| {r['name']} | {r['kind']} | {r['n_pool']} | {len(r['inputs'])} | {r['budget']} | "
                     f"{r['repeats']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: Sequence[dict[str, Any]], designer: str = "athanor",
            peers: Sequence[str] = ("baybe", "botorch")) -> list[str]:
    """Issue 20's target per dataset: the designer's mean EF at least each peer's, and its median
    proposal latency at most BayBE's."""
    lines = []
    for r in results:
        d = r["designers"].get(designer)
        if d is None:
            continue
        behind = [p for p in peers if p in r["designers"] and r["designers"][p]["ef_mean"] > d["ef_mean"]]
        baybe = r["designers"].get("baybe")
        slower = baybe is not None and d["latency_s_median"] > baybe["latency_s_median"]
        lines.append(f"{r['name']}: EF {'met' if not behind else 'behind ' + ', '.join(behind)}; latency "
                     + ("–" if baybe is None else f"{d['latency_s_median']:.2f} s against BayBE's "
                        f"{baybe['latency_s_median']:.2f} s{' (slower)' if slower else ''}"))
    return lines


def rewrite_readme(half: str, results: Sequence[dict[str, Any]]) -> None:
    readme = ROOT / "benchmarks" / "README.md"
    begin, end = f"<!-- suite {half} begin -->", f"<!-- suite {half} end -->"
    text = readme.read_text()
    if begin not in text:
        return
    start, stop = text.index(begin) + len(begin), text.index(end)
    readme.write_text(text[:start] + "\n" + table(results) + "\n" + text[stop:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=[*HALVES, "all"], default="development")
    parser.add_argument("--datasets", default="", help="comma list of dataset names (default: the half's)")
    parser.add_argument("--designers", default=DEFAULT_DESIGNERS, help=f"as for `athanor bench optimizers` "
                        f"(default {DEFAULT_DESIGNERS}); batch designers: athanor@q4x2, baybe@q4")
    parser.add_argument("--budget", type=int, default=60, help="experiments per campaign, the 2 starting rows included")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="datasets run at once (one process each)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS.relative_to(ROOT)}: "
                        "then the README's table is rewritten)")
    args = parser.parse_args(argv)
    try:
        suite = load_suite()
        chosen = [n for n in args.datasets.split(",") if n] or [
            n for n, d in suite.items() if args.half in ("all", d.half)]
        unknown = [n for n in chosen if n not in suite]
        if unknown:
            raise BenchError(f"no dataset {', '.join(unknown)} in {SUITE.relative_to(ROOT)} "
                             f"(known: {', '.join(suite)})")
        with ProcessPoolExecutor(max_workers=max(1, args.workers)) as workers:
            jobs = {n: workers.submit(run_one, suite[n], args.designers, args.budget, args.repeats, args.out, args.seed)
                    for n in chosen}
            results = []
            for n, job in jobs.items():
                results.append(job.result())
                print(f"{n}: " + ", ".join(f"{k} EF {v['ef_mean']:.2f} ({v['latency_s_median']:.2f} s)"
                                           for k, v in results[-1]["designers"].items()), flush=True)
    except BenchError as exc:
        print(f"suite: error: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    print("\n".join(verdict(results)))
    if args.out == RESULTS:  # the README's tables: every dataset run so far, in the manifest's order
        for half in HALVES:
            found = [RESULTS / half / n / "bench.json" for n, d in suite.items() if d.half == half]
            rewrite_readme(half, [json.loads(f.read_text()) for f in found if f.is_file()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
