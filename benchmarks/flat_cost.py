"""Flat cost per sample: does the platform's time, store and memory per sample stay flat over a long campaign?

    python benchmarks/flat_cost.py --samples 10000 --out runs/bench-flat   # writes runs/bench-flat/flat_cost.json

Issue 12, item 3. A replay campaign on a synthetic pool (3 numeric inputs, one smooth objective with
noise, `--pool-rows` distinct rows), random designer, instant instruments (`latency_s: 0`), no stall
stop (`learner.stall_after: 0`), no surrogates, automatic approval, run in-process through
`athanor.campaign.prepare` / `execute` (Ray started as `athanor run` starts it). Afterwards, from the
store:

* time per sample over the first W and the last W measurements, W = min(1000, samples // 5):
  (t[W] - t[0]) / W and (t[n-1] - t[n-1-W]) / W, t the sorted `created_at` of the `measurement`
  events; and the same for every consecutive window of W (the profile);
* store size (campaign.db plus its -wal file) per sample, with where the bytes went;
* the driver's RSS when W samples are finished and at the end, and its peak.

Targets (at 10,000 samples on 2 cores): last-window time per sample <= 1.5 x the first window's, and
<= 10 ms; store <= 20 KB per sample; RSS reported at 1,000 and 10,000 samples (flat).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ["x1", "x2", "x3"]
OBJECTIVE = "y"
FINISHED = ("learned", "failed")

TARGET_RATIO = 1.5
TARGET_MS_PER_SAMPLE = 10.0
TARGET_KB_PER_SAMPLE = 20.0


# --- the campaign -------------------------------------------------------------------------------
def write_pool(path: Path, rows: int, seed: int) -> None:
    """`rows` distinct rows: x in [0, 1]^3, y a smooth function of x plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, len(INPUTS)))
    y = (np.sin(3.0 * x[:, 0]) * np.cos(2.0 * x[:, 1]) + 0.5 * (x[:, 2] - 0.4) ** 2
         + 0.05 * rng.standard_normal(rows))
    with path.open("w") as f:
        f.write(",".join([*INPUTS, OBJECTIVE]) + "\n")
        for row, value in zip(x, y):
            f.write(",".join(repr(float(v)) for v in (*row, value)) + "\n")


def write_config(path: Path, pool: Path, samples: int, batch_size: int, seed: int) -> None:
    inputs = ", ".join(f'"{name}"' for name in INPUTS)
    path.write_text(f"""# Written by benchmarks/flat_cost.py: a long replay campaign with nothing but the platform's own cost.
campaign: flat_cost
description: Flat cost per sample (issue 12) - random designer, instant instruments, synthetic pool.
seed: {seed}
space:
  pool:
    dataset: {pool.resolve()}
    inputs: [{inputs}]
objectives:
  - name: "{OBJECTIVE}"
    direction: maximize
budget:
  experiments: {samples}
batch_size: {batch_size}
designer:
  strategy: random
learner:
  stall_after: 0
  surrogates: []
world:
  kind: replay
  latency_s: 0
  noise: 0.0
  failure_rate: 0.0
approval:
  policy: auto
""")


# --- the driver's memory ------------------------------------------------------------------------
def rss_mb() -> float:
    """The driver's resident set now (psutil if installed, else /proc, else the peak)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024)


class Progress:
    """The `on_progress` callback: counts finished samples, notes RSS at the early mark and at the end.

    The conductor calls it on every loop turn, with the list of sample dicts (main at 4e608a1) or with
    a mapping of counts per state (the kernel rewrite); both are accepted."""

    def __init__(self, samples: int, early: int, every: int):
        self.samples, self.early, self.every = samples, early, every
        self.start = time.perf_counter()
        self.calls = 0
        self.finished = 0
        self.rss_early: float | None = None
        self.rss_end: float | None = None
        self.rss_max = 0.0
        self.timeline: list[tuple[int, float, float]] = []  # (finished, wall s, driver CPU s) when it changes
        self._next_report = every

    @staticmethod
    def count(progress: Any) -> int:
        if isinstance(progress, Mapping):
            return int(progress.get("learned", 0)) + int(progress.get("failed", 0))
        return sum(1 for s in progress if s.get("state") in FINISHED)

    def __call__(self, progress: Any) -> None:
        self.calls += 1
        finished = self.count(progress)
        if finished == self.finished and self.calls > 1:
            return
        self.finished = finished
        now = time.perf_counter() - self.start
        self.timeline.append((finished, now, _cpu_s()))
        rss = rss_mb()
        self.rss_max = max(self.rss_max, rss)
        if self.rss_early is None and finished >= self.early:
            self.rss_early = rss
        if finished >= self.samples and self.rss_end is None:
            self.rss_end = rss
        if finished >= self._next_report:
            print(f"  {finished:>6} finished  {now:8.1f} s  RSS {rss:7.1f} MB", flush=True)
            while self._next_report <= finished:
                self._next_report += self.every

    def cpu_at(self, finished: int) -> float | None:
        """The driver's CPU seconds when `finished` samples were first seen finished."""
        return next((cpu for n, _, cpu in self.timeline if n >= finished), None)

    def cpu_ms_per_sample(self, low: int, high: int) -> float | None:
        """Driver CPU per sample between `low` and `high` finished samples: robust to other load on the
        machine, which stretches the wall-clock figures."""
        a, b = self.cpu_at(low), self.cpu_at(high)
        return None if a is None or b is None or high <= low else round((b - a) / (high - low) * 1000, 3)


# --- reading the store --------------------------------------------------------------------------
def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:  # SQLite hands back the stored text when read without the ORM's type
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def measurement_times(store: Any) -> list[float]:
    """Seconds (POSIX) of every `measurement` event, sorted."""
    try:
        from sqlalchemy import text

        with store.engine.connect() as connection:
            rows = connection.execute(text("SELECT created_at FROM events WHERE campaign_id = :c AND kind = 'measurement'"),
                                      {"c": store.campaign_id}).scalars().all()
        times = [_as_datetime(v).timestamp() for v in rows]
    except Exception as exc:  # noqa: BLE001 -- the table changed: fall back to the public API
        print(f"  (direct SQL failed: {type(exc).__name__}: {exc}; reading Store.events instead)", flush=True)
        times = [_as_datetime(m.created_at).timestamp() for m in store.events(kind="measurement")]
    return sorted(times)


def window_costs(times: list[float], window: int) -> dict[str, Any]:
    n = len(times)
    first = (times[window] - times[0]) / window
    last = (times[n - 1] - times[n - 1 - window]) / window
    profile = [(times[min(i + window, n - 1)] - times[i]) / (min(i + window, n - 1) - i)
               for i in range(0, n - 1, window) if min(i + window, n - 1) - i >= window // 2]
    return {"first_ms": first * 1000, "last_ms": last * 1000, "ratio": last / first if first > 0 else math.inf,
            "overall_ms": (times[-1] - times[0]) / (n - 1) * 1000,
            "profile_ms": [round(p * 1000, 3) for p in profile]}


def store_breakdown(store: Any) -> dict[str, Any]:
    """Where the bytes went: JSON text per event kind and per document name (best effort)."""
    from sqlalchemy import text

    out: dict[str, Any] = {}
    queries = {
        "events": "SELECT kind, count(*), sum(length(body)) FROM events WHERE campaign_id = :c GROUP BY kind",
        "documents": "SELECT name, count(*), sum(length(body)) FROM documents WHERE campaign_id = :c GROUP BY name",
        "samples": "SELECT 'rows', count(*), sum(length(candidate) + coalesce(length(recipe), 0) "
                   "+ coalesce(length(product), 0) + length(inputs)) FROM samples WHERE campaign_id = :c",
    }
    with store.engine.connect() as connection:
        for table, query in queries.items():
            try:
                rows = connection.execute(text(query), {"c": store.campaign_id}).all()
            except Exception as exc:  # noqa: BLE001 -- the kernel rewrite may change the tables
                out[table] = f"unavailable ({type(exc).__name__})"
                connection.rollback()
                continue
            out[table] = {str(k): {"rows": int(n), "json_bytes": int(b or 0)}
                          for k, n, b in sorted(rows, key=lambda r: -(r[2] or 0))}
    return out


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def machine() -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    import athanor

    # The commit is this checkout's HEAD; `athanor` says which code ran (an installed copy may differ).
    return {"cores": cores, "python": platform.python_version(), "platform": platform.platform(), "commit": commit,
            "athanor": str(Path(athanor.__file__).resolve().parent)}


# --- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Writes pool.csv, campaign.yaml, the run folder run/ and flat_cost.json into --out.")
    parser.add_argument("--samples", type=int, default=10_000, help="experiments in the campaign (default 10000)")
    parser.add_argument("--batch-size", type=int, default=4, help="proposals per design request (default 4)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-flat",
                        help="output folder (default runs/bench-flat)")
    parser.add_argument("--pool-rows", type=int, default=None,
                        help="distinct rows in the synthetic pool (default: samples + 10%%)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool and the campaign (default 0)")
    parser.add_argument("--force", action="store_true", help="replace a run folder left in --out by an earlier run")
    args = parser.parse_args()
    if args.samples < 10:
        parser.error("--samples must be at least 10")
    pool_rows = args.pool_rows if args.pool_rows is not None else math.ceil(args.samples * 1.1)
    if pool_rows < args.samples:
        parser.error(f"--pool-rows {pool_rows} is fewer than --samples {args.samples}: the pool would run out")
    window = min(1000, args.samples // 5)

    out: Path = args.out
    run_dir = out / "run"
    if run_dir.exists():
        if not args.force:
            parser.error(f"{run_dir} exists: pass --force to replace it, or choose another --out")
        shutil.rmtree(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool, config = out / "pool.csv", out / "campaign.yaml"
    write_pool(pool, pool_rows, args.seed)
    write_config(config, pool, args.samples, args.batch_size, args.seed)

    from athanor.campaign import execute, prepare

    info = machine()
    print(f"flat cost: {args.samples} samples, batch {args.batch_size}, pool {pool_rows} rows, window {window}, "
          f"{info['cores']} cores, commit {info['commit']}", flush=True)
    rss_before = rss_mb()
    load_before = _loadavg()
    cpu_before = _cpu_s()
    progress = Progress(args.samples, early=window, every=max(window, args.samples // 10))
    start = time.perf_counter()
    store, spec = prepare(config, run_dir)
    summary = execute(store, spec, run_dir, on_progress=progress)
    summary = summary if isinstance(summary, Mapping) else {}
    execute_s = time.perf_counter() - start
    driver_cpu_s = _cpu_s() - cpu_before
    load_after = _loadavg()
    rss_after = rss_mb()

    db = run_dir / "campaign.db"
    db_bytes, wal_bytes = file_size(db), file_size(db.with_name(db.name + "-wal"))
    times = measurement_times(store)
    n = len(times)
    if n <= window:
        sys.exit(f"only {n} measurements in the store (expected {args.samples}): status {summary.get('status')}")
    costs = window_costs(times, window)
    try:
        breakdown = store_breakdown(store)
    except Exception as exc:  # noqa: BLE001
        breakdown = {"error": f"{type(exc).__name__}: {exc}"}
    store.close()  # the last connection checkpoints the WAL into the file
    closed_bytes = file_size(db) + file_size(db.with_name(db.name + "-wal"))

    store_kb = (db_bytes + wal_bytes) / 1024 / n
    worst_ms = max(costs["first_ms"], costs["last_ms"])
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "samples": args.samples, "batch_size": args.batch_size, "pool_rows": pool_rows, "seed": args.seed,
        "status": summary.get("status"), "n_measured": n, "window": window,
        "time_per_sample_ms": {"first_window": round(costs["first_ms"], 3), "last_window": round(costs["last_ms"], 3),
                               "ratio_last_to_first": round(costs["ratio"], 3), "overall": round(costs["overall_ms"], 3),
                               "profile_per_window": costs["profile_ms"],
                               "driver_cpu_first_window": progress.cpu_ms_per_sample(1, window + 1),
                               "driver_cpu_last_window": progress.cpu_ms_per_sample(n - window, n)},
        "store": {"db_bytes": db_bytes, "wal_bytes": wal_bytes, "kb_per_sample": round(store_kb, 3),
                  "bytes_after_close": closed_bytes, "kb_per_sample_after_close": round(closed_bytes / 1024 / n, 3),
                  "breakdown": breakdown},
        "rss_mb": {"before_run": round(rss_before, 1), f"at_{window}_finished": _round(progress.rss_early),
                   f"at_{args.samples}_finished": _round(progress.rss_end), "after_run": round(rss_after, 1),
                   "max_during_run": round(progress.rss_max, 1), "peak_process": round(peak_rss_mb(), 1)},
        "wall_s": {"execute": round(execute_s, 2), "campaign": summary.get("wall_s"),
                   "first_to_last_measurement": round(times[-1] - times[0], 2)},
        "driver_cpu_s": round(driver_cpu_s, 2),
        # Other work on the machine slows every sample: the run is fair only with the load near 1-2 on 2 cores.
        "load_average": {"before": load_before, "after": load_after},
        "progress_calls": progress.calls,
        "targets": {
            "ratio_last_to_first": {"limit": TARGET_RATIO, "value": round(costs["ratio"], 3),
                                    "met": costs["ratio"] <= TARGET_RATIO},
            "ms_per_sample": {"limit": TARGET_MS_PER_SAMPLE, "value": round(worst_ms, 3),
                              "met": worst_ms <= TARGET_MS_PER_SAMPLE},
            "store_kb_per_sample": {"limit": TARGET_KB_PER_SAMPLE, "value": round(store_kb, 3),
                                    "met": store_kb <= TARGET_KB_PER_SAMPLE},
            "note": (f"judged at the window of {window}; the issue's targets are for 10,000 samples on 2 cores"
                     if args.samples != 10_000 else "the issue's targets: 10,000 samples on 2 cores"),
        },
    }
    (out / "flat_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report, window)
    print(f"wrote {out / 'flat_cost.json'}")


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def print_table(report: dict[str, Any], window: int) -> None:
    t, s, r, targets = report["time_per_sample_ms"], report["store"], report["rss_mb"], report["targets"]
    n = report["samples"]

    def verdict(key: str) -> str:
        return "met" if targets[key]["met"] else "NOT met"

    rows = [
        ("samples measured", f"{report['n_measured']} of {n} (status {report['status']})", ""),
        (f"ms/sample, first {window}", f"{t['first_window']:.2f}", ""),
        (f"ms/sample, last {window}", f"{t['last_window']:.2f}",
         f"<= {TARGET_MS_PER_SAMPLE:g} ms: {verdict('ms_per_sample')}"),
        ("ratio last/first", f"{t['ratio_last_to_first']:.2f}", f"<= {TARGET_RATIO:g}: {verdict('ratio_last_to_first')}"),
        (f"ms/sample per {window}", " ".join(f"{p:.1f}" for p in t["profile_per_window"]), ""),
        ("store KB/sample", f"{s['kb_per_sample']:.1f} ({(s['db_bytes'] + s['wal_bytes']) / 2**20:.1f} MB with the WAL; "
                            f"{s['kb_per_sample_after_close']:.1f} checkpointed)",
         f"<= {TARGET_KB_PER_SAMPLE:g} KB: {verdict('store_kb_per_sample')}"),
        (f"RSS at {window} / {n} finished",
         f"{r[f'at_{window}_finished']} / {r[f'at_{n}_finished']} MB", f"peak {r['peak_process']} MB"),
        ("wall", f"{report['wall_s']['execute']:.1f} s (execute), "
                 f"{report['wall_s']['first_to_last_measurement']:.1f} s first to last measurement", ""),
        ("driver CPU ms/sample", f"{t['driver_cpu_first_window']} first, {t['driver_cpu_last_window']} last "
                                 f"({report['driver_cpu_s']:.1f} s in all)",
         f"load average {report['load_average']['before']} -> {report['load_average']['after']}"),
    ]
    width = max(len(k) for k, _, _ in rows)
    vwidth = max(len(v) for _, v, _ in rows)
    for key, value, note in rows:
        print(f"{key.ljust(width)}  {value.ljust(vwidth)}  {note}".rstrip())


if __name__ == "__main__":
    main()
