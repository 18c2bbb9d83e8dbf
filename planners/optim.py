"""Maximizing an acquisition function over the three kinds of design space.

- a finite pool: score every free row exactly, then pick greedily, each pick becoming a pending
  point for the next (so a batch spreads out);
- a box with optional categorical dimensions: BoTorch's `optimize_acqf` / `optimize_acqf_mixed`;
- a composition simplex with per-element bounds: projected gradient ascent. Every iterate is put
  back on {sum x = 1, low <= x <= high} by a Euclidean projection (a bisection on one shift), so no
  equality-constrained SLSQP is needed: that took 14 s for q=4, n=100, d=10.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.optim import optimize_acqf, optimize_acqf_mixed


def project_to_simplex(y: torch.Tensor, low: torch.Tensor, high: torch.Tensor, iters: int = 64) -> torch.Tensor:
    """Euclidean projection of each row of `y` onto {x : sum x = 1, low <= x <= high}.

    The projection is clip(y - tau, low, high) for the shift tau that makes the row sum to 1; the sum
    is monotone in tau, so bisection finds it. The last rounding residual goes to the element with
    the most room, so rows sum to 1 to machine precision.
    """
    lo_tau = (y - high).min(dim=-1, keepdim=True).values
    hi_tau = (y - low).max(dim=-1, keepdim=True).values
    for _ in range(iters):
        tau = (lo_tau + hi_tau) / 2
        too_much = (y - tau).clamp(min=low, max=high).sum(dim=-1, keepdim=True) > 1
        lo_tau = torch.where(too_much, tau, lo_tau)
        hi_tau = torch.where(too_much, hi_tau, tau)
    x = (y - (lo_tau + hi_tau) / 2).clamp(min=low, max=high)
    residual = 1 - x.sum(dim=-1, keepdim=True)
    room = torch.where(residual > 0, high - x, x - low)
    fix = torch.zeros_like(x).scatter(-1, room.argmax(dim=-1, keepdim=True), residual)
    return x + fix


def score_pool(acqf: AcquisitionFunction, free: torch.Tensor, q: int, chunk: int = 1024) -> tuple[list[int], list[float]]:
    """Greedy batch from a finite set: exact scores, each pick pending for the next."""
    chosen: list[int] = []
    values: list[float] = []
    base_pending = acqf.X_pending
    for _ in range(min(q, len(free))):
        with torch.no_grad():
            scores = torch.cat([acqf(free[i:i + chunk].unsqueeze(1)) for i in range(0, len(free), chunk)])
        if chosen:
            scores[chosen] = -torch.inf
        best = int(scores.argmax())
        chosen.append(best)
        values.append(float(scores[best]))
        picked = free[chosen]
        acqf.set_X_pending(picked if base_pending is None else torch.cat([base_pending, picked]))
    acqf.set_X_pending(base_pending)
    return chosen, values


def optimize_box(acqf: AcquisitionFunction, dim: int, q: int, cat_dims: Sequence[int], cardinalities: Sequence[int],
                 num_restarts: int, raw_samples: int, max_combos: int = 24,
                 rng: np.random.Generator | None = None) -> tuple[torch.Tensor, list[float]]:
    bounds = torch.zeros(2, dim, dtype=torch.double)
    bounds[1] = 1.0
    for j, k in zip(cat_dims, cardinalities):
        bounds[1, j] = k - 1
    if not cat_dims:
        X, values = optimize_acqf(acqf, bounds, q=q, num_restarts=num_restarts, raw_samples=raw_samples,
                                  sequential=True)
        return X, [float(v) for v in torch.atleast_1d(values)]
    combos = list(itertools.product(*[range(k) for k in cardinalities]))
    if len(combos) > max_combos:  # too many to enumerate: a fixed random subset
        rng = rng or np.random.default_rng(0)
        combos = [combos[i] for i in rng.choice(len(combos), size=max_combos, replace=False)]
    fixed = [{j: float(v) for j, v in zip(cat_dims, combo)} for combo in combos]
    X, values = optimize_acqf_mixed(acqf, bounds, q=q, fixed_features_list=fixed,
                                    num_restarts=num_restarts, raw_samples=raw_samples)
    return X, [float(v) for v in torch.atleast_1d(values)] * (q if torch.atleast_1d(values).numel() == 1 else 1)


def optimize_simplex(acqf: AcquisitionFunction, dim: int, q: int, comp_dims: Sequence[int], low: np.ndarray,
                     high: np.ndarray, cat_dims: Sequence[int], cardinalities: Sequence[int], num_restarts: int,
                     raw_samples: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """Sequential greedy batch on a box × bounded simplex, by projected Adam from the best raw samples."""
    comp = torch.tensor(list(comp_dims))
    free = torch.tensor([j for j in range(dim) if j not in set(comp_dims) and j not in set(cat_dims)], dtype=torch.long)
    lo = torch.as_tensor(low, dtype=torch.double)
    hi = torch.as_tensor(high, dtype=torch.double)
    base_pending = acqf.X_pending
    picks: list[torch.Tensor] = []
    values: list[float] = []

    def feasible(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., free] = x[..., free].clamp(0, 1)
        x[..., comp] = project_to_simplex(x[..., comp], lo, hi)
        return x

    for _ in range(q):
        raw = torch.rand(raw_samples, 1, dim, dtype=torch.double, generator=generator)
        exponential = -torch.log1p(-raw[..., comp].clamp(max=1 - 1e-12)) + 1e-300
        raw[..., comp] = exponential / exponential.sum(dim=-1, keepdim=True)
        for j, k in zip(cat_dims, cardinalities):
            raw[..., j] = torch.randint(k, (raw_samples, 1), generator=generator).double()
        raw = feasible(raw)
        with torch.no_grad():
            scores = acqf(raw)
        x = raw[scores.topk(min(num_restarts, raw_samples)).indices].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=0.02)
        movable = torch.ones(dim, dtype=torch.double)
        movable[list(cat_dims)] = 0.0
        for _ in range(steps):
            optimizer.zero_grad()
            (-acqf(x).sum()).backward()
            x.grad *= movable  # categorical dimensions stay at their sampled choice
            optimizer.step()
            with torch.no_grad():
                x.copy_(feasible(x))
        with torch.no_grad():
            final = acqf(x)
        best = int(final.argmax())
        picks.append(x[best].detach().clone())
        values.append(float(final[best]))
        pending = torch.cat(picks)
        acqf.set_X_pending(pending if base_pending is None else torch.cat([base_pending, pending]))
    acqf.set_X_pending(base_pending)
    return torch.cat(picks), values
