"""Candidate optimizations per second of the gradient designer through CHGNet (issue 17).

    python benchmarks/smoacs_throughput.py --config configs/perovskite_smoacs.yaml \\
        --candidates 8,32,128 --steps 20 --out benchmarks/results/smoacs_throughput.json

One candidate optimization is one candidate taken through every step of a first proposal (no
measurements: the pretrained prediction alone), as `last_timing` of the strategy counts it: the
optimization's wall time, decoding and scoring excluded; `wall_s` is the whole proposal. Each batch size runs on every device given (`--devices
cpu,cuda`; cuda where one is present), with the campaign's own designer options otherwise, after one
untimed warm-up proposal that builds the neighbour lists. On a CPU the designer uses one intra-op
thread (its `single_thread` option) unless `--threads N` with N > 1 gives it N.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from athanor.agents.designer import make_strategy
from athanor.spec import DesignerSpec, load_campaign


def measure(config: str, candidates: list[int], steps: int, devices: list[str], threads: int | None) -> dict:
    spec = load_campaign(config)
    if threads:  # more than one: the designer keeps torch's threads instead of one
        torch.set_num_threads(threads)
    rows = []
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            continue
        for n in candidates:
            options = {**spec.designer.options, "n_candidates": n, "steps": steps, "device": device,
                       "single_thread": not (threads and threads > 1)}
            strategy = make_strategy(spec.model_copy(update={"designer": DesignerSpec(strategy="gradient", options=options)}))
            strategy.propose([], 1, [])  # warm-up: neighbour lists, kernels
            start = time.perf_counter()
            strategy.propose([], 2, [])  # no measurements yet: the pretrained prediction alone
            timing = strategy.last_timing
            rows.append({"device": device, "candidates": n, "steps": steps, "rounds": strategy.rounds,
                         "seconds": timing["seconds"], "wall_s": time.perf_counter() - start,
                         "candidate_optimizations_per_s": timing["candidate_optimizations_per_s"]})
            print(f"{device}: {n} candidates x {steps} steps in {timing['seconds']:.1f} s = "
                  f"{timing['candidate_optimizations_per_s']:.2f} candidate optimizations/s", file=sys.stderr)
    return {"config": config, "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/perovskite_smoacs.yaml")
    parser.add_argument("--candidates", default="8,32,128", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--devices", default="cpu,cuda", type=lambda s: s.split(","))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = measure(args.config, args.candidates, args.steps, args.devices, args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
