"""Pool-based optimizer benchmark: the protocol of Liang et al. (npj Comput Mater 7, 188, 2021).

    python benchmarks/optimizers.py --dataset data/liang2021/Perovskite.csv \\
        --inputs CsPbI,FAPbI,MAPbI --objective "Instability index" --direction min \\
        --budget 50 --repeats 10 --designers athanor,baybe,ax,random --out benchmarks/results/perovskite

Every distinct input row of the dataset is one possible experiment (duplicates averaged). Each
campaign starts from 2 random rows, the same two for every designer in a given repeat, then asks
the designer for one row at a time until the budget (which counts the 2 initial rows). Writes
OUT/bench.json and OUT/top5.png. The random baseline is exact, never simulated: drawing i rows
without replacement finds on average i/N of the top rows (the hypergeometric mean), whatever their
number. Library use: `run_benchmark(...)`; CLI wiring: `add_parser(subparsers)`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import random as _random
import statistics
import sys
import time
from collections import deque
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from athanor.errors import AthanorError

if __package__:  # imported as benchmarks.optimizers (or from wherever it is moved to)
    from .adapters import BenchError, DesignerSpec, Pool, check_available, load_problem, make_designer, resolve
else:  # run as a script, or loaded by path: the sibling module sits in this file's folder
    if str(Path(__file__).resolve().parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
    from adapters import BenchError, DesignerSpec, Pool, check_available, load_problem, make_designer, resolve

N_INITIAL = 2
THRESHOLD = 0.8
TOP_FRACTION = 0.05
RANDOM_NOTE = "exact: E[Top%(i)] = i/N (hypergeometric mean, sampling without replacement)"


# --- metrics ---------------------------------------------------------------------------------------


def top_rows(y: np.ndarray, direction: str) -> np.ndarray:
    """The ceil(5 % of N) best rows; a tie at the cut goes to the earlier row (stable sort)."""
    k = math.ceil(TOP_FRACTION * len(y) - 1e-9)
    order = np.argsort(-y if direction == "max" else y, kind="stable")
    return np.sort(order[:k])


def random_curve(n_pool: int, budget: int) -> np.ndarray:
    """Expected Top%(i) of uniform sampling without replacement, i = 1..budget: exactly i/N."""
    return np.arange(1, budget + 1, dtype=float) / n_pool


def enhancement(curve: np.ndarray, n_pool: int) -> np.ndarray:
    """EF(i) = Top%_method(i) / Top%_random(i); random's Top%(i) = i/N is never 0 for i >= 1."""
    return np.asarray(curve, dtype=float) / random_curve(n_pool, len(curve))


def acceleration(curve: np.ndarray, n_pool: int, threshold: float = THRESHOLD) -> float | None:
    """AF(t) = experiments random needs for Top% = t (ceil(t·N)) / the first i with mean Top% >= t."""
    reached = np.flatnonzero(np.asarray(curve, dtype=float) >= threshold - 1e-12)
    if reached.size == 0:
        return None
    return math.ceil(threshold * n_pool - 1e-9) / float(reached[0] + 1)


def found_curve(picks: Sequence[int], top: np.ndarray) -> np.ndarray:
    """Top%(i) of one campaign: the fraction of the top rows among its first i picks."""
    return np.cumsum(np.isin(np.asarray(picks), top)) / len(top)


# --- seeds -----------------------------------------------------------------------------------------


def initial_rows(n_pool: int, seed: int, repeat: int) -> list[int]:
    """The repeat's starting rows; a function of (seed, repeat) only, so every designer gets them."""
    return [int(i) for i in np.random.default_rng([seed, repeat]).choice(n_pool, N_INITIAL, replace=False)]


def designer_seed(seed: int, repeat: int) -> int:
    """One seed per repeat, shared by all designers (31 bits: every library accepts it)."""
    return int(np.random.SeedSequence([seed, repeat, 1]).generate_state(1)[0] >> 1)


def _seed_globals(seed: int) -> None:
    """Reset the global RNGs before each campaign, so a designer's result does not depend on which
    designers ran before it (BayBE and Ax reseed them; a strategy might draw from them)."""
    _random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


# --- running ---------------------------------------------------------------------------------------


def run_campaign(spec: DesignerSpec, pool: Pool, start: list[int], budget: int, seed: int,
                 models: list[str] | None = None) -> tuple[list[int], list[float]]:
    """One campaign: the shared start, then `spec.batch` rows per proposal until the budget.

    With `spec.in_flight` F > 1 the campaign runs as a lab runs it: each batch is proposed while the
    F − 1 batches before it are still being measured (pending), and the oldest completes after each
    proposal. Picks are in the order proposed; returns picks and the seconds each proposal took, and
    appends to `models` the model each proposal used, where the designer names one."""
    _seed_globals(seed)
    designer = make_designer(spec, pool, seed)
    y = pool.y
    picks, latencies = list(start), []
    measured, in_flight = list(start), deque()
    while len(picks) < budget:
        q = min(spec.batch, budget - len(picks))
        pending = [row for rows in in_flight for row in rows]
        began = time.perf_counter()
        rows = designer.next_rows(list(measured), [float(y[i]) for i in measured], pending, q)
        latencies.append(time.perf_counter() - began)
        if models is not None and getattr(designer, "model", None):
            models.append(designer.model)
        bad = [r for r in rows if not 0 <= r < len(pool) or r in picks]
        if len(rows) != q or bad or len(set(rows)) != q:
            raise BenchError(f"designer {spec.name!r} proposed rows {rows} for {q}: "
                             f"{'a row already measured, pending or outside the pool' if bad else 'not distinct rows'}")
        picks += rows
        in_flight.append(rows)
        if len(in_flight) >= spec.in_flight:
            measured += in_flight.popleft()
    return picks, latencies


def _as_list(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def resolve_inputs(header: Sequence[str], given: Sequence[str] | str | None, objective: str) -> list[str]:
    """Input columns from names given whole, several times, or as comma lists; none: all but the
    objective. A given string that is itself a column is kept whole (a name may contain a comma)."""
    if objective not in header:
        raise BenchError(f"no column {objective!r} (columns: {', '.join(header)})")
    if not given:
        return [c for c in header if c != objective]
    items = [given] if isinstance(given, str) else list(given)
    names = [n for item in items for n in ([item] if item in header else _as_list(item))]
    missing = [n for n in names if n not in header]
    if missing:
        raise BenchError(f"no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
    return list(dict.fromkeys(names))


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in ("athanor", "numpy", "torch", "botorch", "baybe", "ax-platform"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def summarize(curve: np.ndarray, n_pool: int, latencies: Sequence[float]) -> dict[str, Any]:
    ef = enhancement(curve, n_pool)
    return {"top5": [round(float(v), 6) for v in curve], "ef": [round(float(v), 6) for v in ef],
            "ef_mean": round(float(ef.mean()), 6), f"af_{THRESHOLD}": acceleration(curve, n_pool),
            "latency_s_median": round(statistics.median(latencies), 6) if latencies else 0.0,
            "latency_s_mean": round(statistics.fmean(latencies), 6) if latencies else 0.0,
            "proposals": len(latencies)}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Pin torch's intra-op threads for the run, then restore them. On a shared 2-core machine
    OpenMP threads that spin while another process holds a core made one BoTorch proposal 20x
    slower (6 s instead of 0.3 s, same points); these small GPs gain nothing from threads."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_benchmark(dataset: str | Path, inputs: Sequence[str] | str | None, objective: str, direction: str,
                  budget: int, repeats: int, designers: Sequence[str] | str, out: str | Path | None,
                  seed: int = 0, log: Callable[[str], None] | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Run every designer on the same campaigns; write OUT/bench.json and OUT/top5.png (unless out
    is None) and return the bench.json content. `inputs=None` means every column but the objective;
    `threads` pins torch's threads during the run (None: leave them)."""
    with torch_threads(threads):
        return _run(dataset, inputs, objective, direction, budget, repeats, designers, out, seed, log, threads)


def _run(dataset: str | Path, inputs: Sequence[str] | str | None, objective: str, direction: str,
         budget: int, repeats: int, designers: Sequence[str] | str, out: str | Path | None,
         seed: int, log: Callable[[str], None] | None, threads: int | None) -> dict[str, Any]:
    header = list(pd.read_csv(dataset, encoding="utf-8-sig", nrows=0).columns)
    pool = load_problem(dataset, resolve_inputs(header, inputs, objective), objective, direction)
    n = len(pool)
    if not N_INITIAL <= budget <= n:
        raise BenchError(f"budget must be between {N_INITIAL} (the initial rows) and the pool's {n} rows")
    if repeats < 1:
        raise BenchError("repeats must be at least 1")
    specs = [resolve(name) for name in dict.fromkeys(_as_list(designers))]
    if not specs:
        raise BenchError("no designers given")
    for spec in specs:
        check_available(spec)
    top = top_rows(pool.y, pool.direction)
    starts = [initial_rows(n, seed, r) for r in range(repeats)]
    result: dict[str, Any] = {
        "dataset": str(pool.dataset), "n_pool": n, "budget": budget, "repeats": repeats,
        "versions": versions(), "objective": objective, "direction": pool.direction, "inputs": pool.inputs,
        "seed": seed, "torch_threads": threads, "n_top": int(len(top)), "top_rows": top.tolist(),
        "n_dropped": pool.n_dropped,
        "initial_rows": starts, "random_curve": RANDOM_NOTE, "designers": {},
    }
    for spec in specs:
        began = time.perf_counter()
        if spec.kind == "random":
            entry = summarize(random_curve(n, budget), n, [])
            entry["picks"] = None
        else:
            curves, latencies, picks, models = [], [], [], []
            for r, start in enumerate(starts):
                rows, times = run_campaign(spec, pool, start, budget, designer_seed(seed, r), models)
                curves.append(found_curve(rows, top))
                latencies += times
                picks.append(rows)
                if log:
                    log(f"{spec.name}: repeat {r + 1}/{repeats}, Top% {curves[-1][-1]:.2f} after {budget}, "
                        f"{statistics.median(times) if times else 0:.3f} s per proposal")
            entry = summarize(np.mean(curves, axis=0), n, latencies)
            entry["picks"] = picks
            if models:  # how often each surrogate steered a proposal
                entry["models"] = dict(collections.Counter(m.rsplit("-", 1)[0] for m in models).most_common())
        entry.update(kind=spec.kind, strategy=spec.strategy, wall_s=round(time.perf_counter() - began, 3))
        result["designers"][spec.name] = entry
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, out / "top5.png")
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Top% against experiments, one line per designer. Uses the Agg canvas directly, so it neither
    needs a display nor changes the backend of a caller's pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(1, result["budget"] + 1)
    for name, entry in result["designers"].items():
        if entry["kind"] == "random":
            ax.plot(x, entry["top5"], "k--", lw=1.2, label=f"{name} (exact, i/N)")
        else:
            ax.plot(x, entry["top5"], lw=1.8, label=f"{name} (EF {entry['ef_mean']:.2f})")
    ax.axhline(THRESHOLD, color="0.6", lw=0.8, ls=":")
    ax.set(xlabel="experiments", ylabel=f"Top% (of the {result['n_top']} best rows found)", ylim=(-0.02, 1.02),
           xlim=(1, result["budget"]),
           title=f"{Path(result['dataset']).stem}: N = {result['n_pool']}, {result['repeats']} repeats")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


# --- command line ----------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, type=Path, help="CSV file, one row per experiment")
    parser.add_argument("--inputs", action="append", metavar="COLS",
                        help="input column(s): repeat the option or give a comma list")
    parser.add_argument("--inputs-all-but-objective", action="store_true",
                        help="use every column except the objective as an input")
    parser.add_argument("--objective", required=True, help="objective column")
    parser.add_argument("--direction", required=True, choices=["min", "max", "minimize", "maximize"],
                        help="whether the objective is to be minimized or maximized")
    parser.add_argument("--budget", type=int, required=True, help="experiments per campaign, the 2 initial included")
    parser.add_argument("--repeats", type=int, default=10, help="campaigns per designer")
    parser.add_argument("--designers", action="append", metavar="NAMES", default=None,
                        help="comma list: athanor (the bayesian strategy), athanor:STRATEGY or a strategy "
                             "name, baybe, ax, botorch (a plain BoTorch GP with LogEI), random (exact curve); "
                             "athanor[key=value;...] passes options to the strategy (e.g. athanor[kernel=rbf]); "
                             "a suffix @qB proposes B rows at a time, @qBxF with F batches in flight "
                             "(e.g. athanor@q4x2); default athanor,baybe,ax,random")
    parser.add_argument("--seed", type=int, default=0, help="base seed: each repeat's starting rows and designer seed derive from (seed, repeat); default 0")
    parser.add_argument("--out", required=True, type=Path, help="folder for bench.json and top5.png")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads during the run (default 1; 0 leaves torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=_command)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `optimizers` on a sub-command set (e.g. under `athanor bench`); it sets func=."""
    parser = subparsers.add_parser("optimizers", help="benchmark designers on a pool dataset",
                                   description=__doc__.splitlines()[0])
    _add_arguments(parser)
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.inputs and args.inputs_all_but_objective:
        raise BenchError("give --inputs or --inputs-all-but-objective, not both")
    if not args.inputs and not args.inputs_all_but_objective:
        raise BenchError("give the input columns: --inputs COLS or --inputs-all-but-objective")
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = run_benchmark(args.dataset, args.inputs, args.objective, args.direction, args.budget, args.repeats,
                           args.designers or ["athanor", "baybe", "ax", "random"], args.out, args.seed, log,
                           args.threads or None)
    for name, entry in result["designers"].items():
        af = entry[f"af_{THRESHOLD}"]
        print(f"{name:>16}: Top% {entry['top5'][-1]:.2f} after {result['budget']}, EF mean {entry['ef_mean']:.2f}, "
              f"AF(0.8) {'-' if af is None else f'{af:.2f}'}, {entry['latency_s_median']:.3f} s per proposal")
    print(f"wrote {Path(args.out) / 'bench.json'} and {Path(args.out) / 'top5.png'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optimizers.py", description=__doc__.splitlines()[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AthanorError as exc:  # BenchError, or the pool's own (a missing column)
        print(f"optimizers: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
