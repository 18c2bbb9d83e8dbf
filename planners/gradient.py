"""Gradient strategy: many candidates optimized at once by gradient descent on relaxed inputs (SMOACS).

A candidate is a set of learnable tensors, one row per candidate in a batch:

* sites — every categorical parameter whose choices are element symbols and that `sites` names
  (with its multiplicity, e.g. {"a_site": 1, "b_site": 1, "anion": 3}), plus fixed sites that are no
  input of the space (e.g. {"anion": {"elements": ["O"], "multiplicity": 3}}): logits over the site's
  elements. The template's neutral charge patterns (oxidation.py) each mask the logits; the masked,
  temperature-scaled softmaxes are mixed by learnable pattern weights (softmax of pattern logits at the
  same temperature), as SMOACS does. Decoding takes the most probable pattern and, per site, the most
  probable element that pattern allows: every decoded candidate is charge-neutral by construction.
* other categorical parameters — a plain softmax over the choices;
* continuous / integer parameters — a sigmoid onto [0, 1] (integers rounded when decoded);
* a composition simplex (the alloy template) — softmax weights w (no annealing: a composition is
  continuous), x = low + (1 − Σlow)·w, upper bounds as a hinge penalty; decoded with the exact
  bounded projection of space.py.

The temperature anneals geometrically from `t_start` (1) to `t_end` (0.01) over the steps, so the
site distributions end one-hot. After each of `rounds` rounds the worst `mutate_fraction` of the
batch is replaced by perturbed copies of the best.

Predictor: either `predictor`, a callable given by the campaign (a world's differentiable model)
mapping features X [B, d] to {output: mean [B]} or {output: (mean [B], sd [B])}, or — when none is
given — a DeepEnsemble fitted on the history, explored optimistically (mean ± κ·sd). Features: per
space parameter in order, a categorical as its distribution over its choices (one-hot when decoded),
a continuous/integer parameter scaled to [0, 1]; then the composition's fractions in the space's
element order. A callable may carry `.device` and `.dtype` attributes (default: cpu when it has no
`.device`, float64).

Losses (per candidate, summed): maximize → −(μ+κσ)/s, minimize → (μ−κσ)/s, with s the measured
spread; target t ± tol → a hinge outside the window shrunk by a margin; outcome constraints → hinges
outside [lower, upper] shrunk by a margin. The Goldschmidt tolerance factor is computed in closed form
from Shannon radii of the site distributions when a `tolerance_factor` constraint exists and the
sites are recognizable as A, B, X (names a_site/b_site/anion or the `roles` option).

Throughput: after `propose` (or `optimize`), `last_timing` holds {"candidates", "steps", "rounds",
"seconds", "candidate_optimizations_per_s"}: one candidate optimization = one candidate taken through
all steps and rounds, so the rate is n_candidates / wall time of the optimization (model fit excluded).
On CPU, `propose` runs with one intra-op thread (option `single_thread`), restored afterwards.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from athanor import chemistry
from athanor.chemistry import is_element
from athanor.messages import Candidate, Prediction
from athanor.planners.base import Observation, input_key
from athanor.planners.ensemble import DeepEnsemble, default_device
from athanor.planners.oxidation import ChargePatterns, Site, charge_patterns
from athanor.planners.random import SobolStrategy
from athanor.planners.space import DesignSpace, bounded_simplex
from athanor.spec import CategoricalParameter, IntegerParameter, Objective, OutcomeConstraint

__all__ = ["GradientStrategy"]

Predictor = Callable[[torch.Tensor], Mapping[str, Any]]
_NEG = -1e9  # logit of a masked-out element: exp underflows to exactly 0 at every temperature used


def shannon_radius(symbol: str, charge: int, cn: int) -> float:
    """Shannon ionic radius (Å) at the tabulated coordination nearest `cn`; the atomic radius (or
    1.5 Å) for an ion the table lacks, so a relaxed distribution over it stays differentiable."""
    from pymatgen.core.periodic_table import Element

    found = chemistry.shannon_radius(symbol, charge, cn)
    return found[0] if found is not None else float(Element(symbol).atomic_radius or 1.5)


@dataclass
class _Block:
    """One categorical parameter (or fixed site): its choices and, for a charge site, its index among sites."""

    name: str
    choices: tuple[str, ...]
    in_space: bool = True
    site: int | None = None  # index into the charge template's sites


@dataclass
class _Template:
    blocks: list[_Block] = field(default_factory=list)
    patterns: ChargePatterns | None = None
    width: int = 1  # the widest block

    @property
    def site_blocks(self) -> list[_Block]:
        return [b for b in self.blocks if b.site is not None]


class GradientStrategy:
    name = "gradient"

    def __init__(self, space: DesignSpace, objectives: Sequence[Objective] = (), seed: int = 0,
                 constraints: Sequence[OutcomeConstraint] = (), predictor: Predictor | str | None = None,
                 sites: Mapping[str, Any] | None = None, n_candidates: int = 256, steps: int = 200,
                 rounds: int = 3, lr: float = 0.1, t_start: float = 1.0, t_end: float = 0.01,
                 kappa: float = 1.0, n_init: int = 3, mutate_fraction: float = 0.25, mutation_noise: float = 0.5,
                 margin: float = 0.25, min_distance: float = 0.02, repulsion: float = 2.0, roles: Mapping[str, str] | None = None,
                 ensemble: Mapping[str, Any] | None = None, device: str | None = None, single_thread: bool = True,
                 **_options: Any):
        if space.is_pool:
            raise ValueError("the gradient designer optimizes inputs directly: give parameters or a composition, not a pool")
        if not objectives:
            raise ValueError("the gradient designer needs at least one objective")
        self.space = space
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.seed = int(seed)
        if isinstance(predictor, str):
            warnings.warn(f"designer.options.predictor {predictor!r} was not replaced by a model; "
                          "using a deep ensemble fitted on the history", RuntimeWarning, stacklevel=2)
            predictor = None
        self.predictor = predictor
        self.n_candidates, self.steps, self.rounds = int(n_candidates), int(steps), max(1, int(rounds))
        self.lr, self.t_start, self.t_end, self.kappa = float(lr), float(t_start), float(t_end), float(kappa)
        self.n_init, self.mutate_fraction, self.mutation_noise = int(n_init), float(mutate_fraction), float(mutation_noise)
        self.margin, self.min_distance, self.repulsion = float(margin), float(min_distance), float(repulsion)
        self._anchors: torch.Tensor | None = None
        self.ensemble_options = dict(ensemble or {})
        self.single_thread = bool(single_thread)
        if predictor is not None:
            self.device = torch.device(device) if device else torch.device(getattr(predictor, "device", "cpu"))
            self.dtype = getattr(predictor, "dtype", torch.float64)
        else:
            self.device = default_device(device)
            self.dtype = torch.float32
        self.template = self._build_template(sites or {})
        self.roles = self._roles(roles)
        self.outputs = [o.name for o in self.objectives]
        self.outputs += [c.name for c in self.constraints if c.name not in self.outputs]
        self.fallback = SobolStrategy(space, objectives, seed)
        self.model_version: str | None = None
        self.last_timing: dict[str, float] = {}
        comp = space.space.composition
        self._comp_elements = list(comp.elements) if comp is not None else []
        if comp is not None:
            low, high = space.comp_bounds
            self._low = torch.as_tensor(low, dtype=self.dtype, device=self.device)
            self._high = torch.as_tensor(high, dtype=self.dtype, device=self.device)
        self._radii = self._radius_table() if self.roles else None

    # --- the template -------------------------------------------------------------------------
    def _build_template(self, sites: Mapping[str, Any]) -> _Template:
        template = _Template()
        charge_sites: list[Site] = []
        params = {p.name: p for p in self.space.space.parameters}
        for p in self.space.space.parameters:
            if not isinstance(p, CategoricalParameter):
                continue
            block = _Block(p.name, tuple(p.choices))
            if p.name in sites:
                if not all(is_element(c) for c in p.choices):
                    raise ValueError(f"designer.options.sites: {p.name!r} has choices that are not element symbols")
                spec = sites[p.name]
                mult = int(spec if not isinstance(spec, Mapping) else spec.get("multiplicity", 1))
                block.site = len(charge_sites)
                charge_sites.append(Site(p.name, block.choices, mult))
            template.blocks.append(block)
        for name, spec in sites.items():
            if name in params:
                if not isinstance(params[name], CategoricalParameter):
                    raise ValueError(f"designer.options.sites: {name!r} is not a categorical parameter")
                continue
            if not isinstance(spec, Mapping) or "elements" not in spec:
                raise ValueError(f"designer.options.sites: {name!r} is no parameter of the space; give it as "
                                 "{elements: [...], multiplicity: n} (a fixed site of one element)")
            elements = tuple(spec["elements"])
            if len(elements) != 1 or not is_element(elements[0]):
                raise ValueError(f"designer.options.sites: fixed site {name!r} must hold exactly one element")
            block = _Block(name, elements, in_space=False, site=len(charge_sites))
            charge_sites.append(Site(name, elements, int(spec.get("multiplicity", 1))))
            template.blocks.append(block)
        if charge_sites:
            template.patterns = charge_patterns(charge_sites)
        template.width = max([len(b.choices) for b in template.blocks] or [1])
        return template

    def _roles(self, roles: Mapping[str, str] | None) -> dict[str, int] | None:
        """Which charge sites are A, B and X, when a tolerance-factor constraint wants them."""
        if not any(c.name == "tolerance_factor" for c in self.constraints) or self.template.patterns is None:
            return None
        names = {b.name: b.site for b in self.template.site_blocks}
        roles = dict(roles or {"A": "a_site", "B": "b_site", "X": "anion"})
        if all(roles.get(r) in names for r in "ABX"):
            return {r: names[roles[r]] for r in "ABX"}
        return None

    def _radius_table(self) -> torch.Tensor:
        """R [P, S, E]: Shannon radius of element e at site s in the state pattern p gives it (A: CN 12, else 6)."""
        pats = self.template.patterns
        cn = {self.roles["A"]: 12}
        R = np.zeros(pats.masks.shape)
        for p in range(len(pats)):
            for s, site in enumerate(pats.sites):
                for e, el in enumerate(site.elements):
                    if pats.masks[p, s, e]:
                        R[p, s, e] = shannon_radius(el, int(pats.states[p, s]), cn.get(s, 6))
        return torch.as_tensor(R, dtype=self.dtype, device=self.device)

    # --- parameters and the relaxed candidate ---------------------------------------------------
    def _init_params(self, B: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        kw = dict(dtype=self.dtype)
        t = self.template
        params = {}
        if t.blocks:
            params["logits"] = 0.5 * torch.randn(B, len(t.blocks), t.width, generator=gen, **kw)
        if t.patterns is not None:
            params["patterns"] = 0.5 * torch.randn(B, len(t.patterns), generator=gen, **kw)
        n_cont = sum(1 for p in self.space.space.parameters if not isinstance(p, CategoricalParameter))
        if n_cont:
            params["cont"] = torch.randn(B, n_cont, generator=gen, **kw)
        if self._comp_elements:
            params["comp"] = 0.5 * torch.randn(B, len(self._comp_elements), generator=gen, **kw)
        return {k: v.to(self.device).requires_grad_(True) for k, v in params.items()}

    def _valid(self) -> torch.Tensor:
        """[blocks, width]: True where a block has a choice at that index (padding False)."""
        t = self.template
        valid = torch.zeros(len(t.blocks), t.width, dtype=torch.bool, device=self.device)
        for i, b in enumerate(t.blocks):
            valid[i, : len(b.choices)] = True
        return valid

    def _site_masks(self) -> torch.Tensor:
        """[P, blocks, width]: per pattern, the allowed choices of every block (free blocks: all valid)."""
        t = self.template
        valid = self._valid()
        masks = valid.expand(len(t.patterns), -1, -1).clone()
        pm = torch.as_tensor(t.patterns.masks, device=self.device)
        for i, b in enumerate(t.blocks):
            if b.site is not None:
                masks[:, i, :] = False
                masks[:, i, : pm.shape[2]] = pm[:, b.site, :]
        return masks

    def relax(self, params: Mapping[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
        """Distributions and features of the relaxed candidates at a temperature."""
        t = self.template
        out: dict[str, torch.Tensor] = {}
        if t.blocks:
            logits = params["logits"]
            if t.patterns is not None:
                masks = self._site_masks()  # [P, K, W]
                masked = logits[:, None] + torch.where(masks, 0.0, _NEG).to(logits.dtype)  # [B, P, K, W]
                q = torch.softmax(masked / temperature, dim=-1)
                w = torch.softmax(params["patterns"] / temperature, dim=-1)  # [B, P]
                dist = torch.einsum("bp,bpkw->bkw", w, q)
                out["pattern_weights"], out["per_pattern"] = w, q
            else:
                masked = logits + torch.where(self._valid(), 0.0, _NEG).to(logits.dtype)
                dist = torch.softmax(masked / temperature, dim=-1)
            out["dist"] = dist
        feats = []
        block_index = {b.name: i for i, b in enumerate(t.blocks)}
        j = 0
        for p in self.space.space.parameters:
            if isinstance(p, CategoricalParameter):
                feats.append(out["dist"][:, block_index[p.name], : len(p.choices)])
            else:
                feats.append(torch.sigmoid(params["cont"][:, j : j + 1]))
                j += 1
        if self._comp_elements:
            w = torch.softmax(params["comp"], dim=-1)
            x = self._low + (1.0 - self._low.sum()) * w
            out["comp"] = x
            out["comp_excess"] = torch.relu(x - self._high).sum(-1)
            feats.append(x)
        out["features"] = torch.cat(feats, dim=-1)
        return out

    def decode(self, params: Mapping[str, torch.Tensor]) -> tuple[list[dict[str, Any]], torch.Tensor, list[int | None]]:
        """Hard candidates: inputs, their exact feature rows and their charge pattern (index or None)."""
        t = self.template
        with torch.no_grad():
            B = next(iter(params.values())).shape[0]
            rows: list[dict[str, Any]] = [{} for _ in range(B)]
            chosen_pattern: list[int | None] = [None] * B
            picks = None
            if t.blocks:
                logits = params["logits"]
                if t.patterns is not None:
                    p_star = params["patterns"].argmax(-1)  # [B]
                    allowed = self._site_masks()[p_star]  # [B, K, W]
                    chosen_pattern = [int(p) for p in p_star]
                else:
                    allowed = self._valid().expand(B, -1, -1)
                picks = torch.where(allowed, logits, torch.full_like(logits, -math.inf)).argmax(-1)  # [B, K]
            block_index = {b.name: i for i, b in enumerate(t.blocks)}
            feats = []
            j = 0
            for p in self.space.space.parameters:
                if isinstance(p, CategoricalParameter):
                    k = block_index[p.name]
                    idx = picks[:, k]
                    feats.append(torch.nn.functional.one_hot(idx, len(p.choices)).to(self.dtype))
                    for row, i in zip(rows, idx.tolist()):
                        row[p.name] = p.choices[i]
                else:
                    u = torch.sigmoid(params["cont"][:, j]).cpu().numpy().astype(float)
                    j += 1
                    col = []
                    for row, v in zip(rows, u):
                        if isinstance(p, IntegerParameter):
                            row[p.name] = int(np.clip(round(p.low + v * (p.high - p.low)), p.low, p.high))
                            col.append((row[p.name] - p.low) / (p.high - p.low) if p.high > p.low else 0.0)
                        else:
                            row[p.name] = float(p.low + v * (p.high - p.low))
                            col.append(float(v))
                    feats.append(torch.tensor(col, dtype=self.dtype, device=self.device)[:, None])
            if self._comp_elements:
                w = torch.softmax(params["comp"], dim=-1).cpu().double().numpy()
                low, high = self.space.comp_bounds
                fractions = bounded_simplex(w, low, high)
                for row, x in zip(rows, fractions):
                    row.update({el: float(v) for el, v in zip(self._comp_elements, x)})
                feats.append(torch.as_tensor(fractions, dtype=self.dtype, device=self.device))
            return rows, torch.cat(feats, dim=-1), chosen_pattern

    # --- prediction and loss ----------------------------------------------------------------------
    def _predict(self, X: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.predictor is not None:
            raw = self.predictor(X)
            out = {}
            for name, value in raw.items():
                if isinstance(value, (tuple, list)):
                    mean, sd = value
                else:
                    mean, sd = value, torch.zeros_like(value)
                out[name] = (mean.reshape(-1), sd.reshape(-1))
            return out
        mean, sd = self._model.predict(X)
        return {name: (mean[:, i], sd[:, i]) for i, name in enumerate(self._model_outputs)}

    def _tolerance_factor(self, relaxed: Mapping[str, torch.Tensor], hard: torch.Tensor | None = None) -> torch.Tensor:
        """Goldschmidt t = (rA + rX) / (√2 (rB + rX)), radii expected under the site distributions."""
        t = self.template
        if hard is None:
            q, w = relaxed["per_pattern"], relaxed["pattern_weights"]  # [B, P, K, W], [B, P]
        else:
            q, w = relaxed["per_pattern_hard"], relaxed["pattern_hard"]
        blocks = {b.site: i for i, b in enumerate(t.blocks) if b.site is not None}
        R = self._radii  # [P, S, E]
        r = {}
        for role, s in self.roles.items():
            k = blocks[s]
            qs = q[:, :, k, : R.shape[2]]
            r[role] = torch.einsum("bp,bpe,pe->b", w, qs, R[:, s, :])
        return (r["A"] + r["X"]) / (math.sqrt(2.0) * (r["B"] + r["X"]))

    def _losses(self, preds: Mapping[str, tuple[torch.Tensor, torch.Tensor]], kappa: float | torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """Loss per candidate; `kappa` a number or one per candidate, `weights` [B, objectives] or None (all 1)."""
        total = None
        for j, o in enumerate(self.objectives):
            if o.name not in preds:
                raise ValueError(f"the predictor gives no {o.name!r} (it gives {sorted(preds)})")
            mu, sd = preds[o.name]
            s = self._scale.get(o.name, 1.0)
            if o.direction == "maximize":
                loss = -(mu + kappa * sd) / s
            elif o.direction == "minimize":
                loss = (mu - kappa * sd) / s
            else:  # a window t ± tol, aimed at its inner part (margin) and optimistic by κ·sd
                inner = o.tolerance * (1.0 - self.margin)
                loss = torch.relu((mu - o.target).abs() - kappa * sd - inner) / o.tolerance
            if weights is not None:
                loss = weights[:, j] * loss
            total = loss if total is None else total + loss
        for c in self.constraints:
            if c.name not in preds:
                continue
            mu, sd = preds[c.name]
            width = (c.upper - c.lower) if c.lower is not None and c.upper is not None else self._scale.get(c.name, 1.0)
            m = 0.5 * self.margin * width if c.lower is not None and c.upper is not None else 0.0
            loss = torch.zeros_like(mu)
            if c.lower is not None:
                loss = loss + torch.relu(c.lower + m - mu) / width
            if c.upper is not None:
                loss = loss + torch.relu(mu - (c.upper - m)) / width
            total = total + 10.0 * loss
        return total

    def _all_preds(self, X: torch.Tensor, relaxed: Mapping[str, torch.Tensor] | None, hard: bool = False):
        preds = self._predict(X)
        if self.roles is not None and relaxed is not None:
            tf = self._tolerance_factor(relaxed, hard=relaxed.get("pattern_hard") if hard else None)
            preds["tolerance_factor"] = (tf, torch.zeros_like(tf))
        return preds

    # --- the strategy contract ---------------------------------------------------------------------
    def propose(self, history: list[Observation], n: int, pending: list[Observation]) -> list[Candidate]:
        # Small tensors: on a shared CPU one intra-op thread is both faster and far steadier than
        # several (measured 0.7 s vs 0.4–45 s for the same run on 2 busy cores). Restored after.
        threads = torch.get_num_threads()
        if self.device.type == "cpu" and self.single_thread:
            torch.set_num_threads(1)
        try:
            return self._propose(history, n, pending)
        finally:
            torch.set_num_threads(threads)

    def _propose(self, history: list[Observation], n: int, pending: list[Observation]) -> list[Candidate]:
        measured = [o for o in history if not o.failed and all(
            isinstance(o.values.get(k), (int, float)) and math.isfinite(o.values[k]) for k in self._fit_outputs())]
        self._scale = self._scales(measured)
        if self.predictor is None:
            if len(measured) < self.n_init:
                return self._space_filling(history, n, pending, f"initial design ({len(measured)} of {self.n_init} measured)")
            X = torch.stack([self._features(o.inputs) for o in measured])
            Y = torch.tensor([[float(o.values[k]) for k in self._fit_outputs()] for o in measured], dtype=self.dtype)
            opts = {"seed": self.seed + len(history), **self.ensemble_options}
            self._model = DeepEnsemble(device=str(self.device), **opts).fit(X, Y)
            self._model_outputs = self._fit_outputs()
            self.model_version = f"ensemble-{self._model.version}"
        else:
            self.model_version = f"predictor-{getattr(self.predictor, 'version', type(self.predictor).__name__)}"
        done = [*history, *pending]
        self._anchors = torch.stack([self._features(o.inputs) for o in done]) if done else None
        params, _ = self.optimize(len(history) + len(pending))
        return self._select(params, history, pending, n)

    def _fit_outputs(self) -> list[str]:
        analytic = {"tolerance_factor"} if self.roles is not None else set()
        return [k for k in self.outputs if k not in analytic]

    def _scales(self, measured: list[Observation]) -> dict[str, float]:
        scales = {}
        for k in self.outputs:
            values = np.array([o.values[k] for o in measured if k in o.values], dtype=float)
            sd = float(values.std()) if len(values) > 1 else 0.0
            scales[k] = sd if sd > 1e-12 else max(1.0, float(np.abs(values).mean()) if len(values) else 1.0)
        return scales

    def _features(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        feats: list[float] = []
        for p in self.space.space.parameters:
            if isinstance(p, CategoricalParameter):
                feats += [1.0 if inputs[p.name] == c else 0.0 for c in p.choices]
            else:
                feats.append((float(inputs[p.name]) - p.low) / (p.high - p.low) if p.high > p.low else 0.0)
        feats += [float(inputs[el]) for el in self._comp_elements]
        return torch.tensor(feats, dtype=self.dtype, device=self.device)

    def temperature(self, step: int) -> float:
        """Geometric annealing from t_start at step 0 to t_end at the last step."""
        if self.steps <= 1:
            return self.t_end
        return self.t_start * (self.t_end / self.t_start) ** (step / (self.steps - 1))

    def optimize(self, n_before: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Run the batch optimization; returns the final parameters and the timing."""
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + n_before)
        B = self.n_candidates
        params = self._init_params(B, gen)
        # Every candidate gets its own exploration weight and objective weights (mean 1): the batch
        # spreads over several optima instead of collapsing onto one.
        kappa = (self.kappa * 2.0 * torch.rand(B, generator=gen, dtype=self.dtype)).to(self.device)
        kappa[0] = self.kappa
        weights = None
        if len(self.objectives) > 1:
            g = -torch.log(torch.rand(B, len(self.objectives), generator=gen, dtype=self.dtype))
            weights = (len(self.objectives) * g / g.sum(-1, keepdim=True)).to(self.device)
            weights[0] = 1.0
        cuts = {round(self.steps * r / self.rounds) for r in range(1, self.rounds)}
        opt = torch.optim.Adam(list(params.values()), lr=self.lr)
        loss = None
        for step in range(self.steps):
            if step in cuts and loss is not None:
                self._mutate(params, loss.detach(), gen)
                opt = torch.optim.Adam(list(params.values()), lr=self.lr)
            T = self.temperature(step)
            relaxed = self.relax(params, T)
            loss = self._losses(self._all_preds(relaxed["features"], relaxed), kappa, weights)
            if "comp_excess" in relaxed:
                loss = loss + 100.0 * relaxed["comp_excess"]
            loss = loss + self._repel(relaxed["features"])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        seconds = time.perf_counter() - start
        self.last_timing = {"candidates": B, "steps": self.steps, "rounds": self.rounds, "seconds": seconds,
                            "candidate_optimizations_per_s": B / seconds if seconds > 0 else float("inf")}
        return {k: v.detach() for k, v in params.items()}, self.last_timing

    def _length_scales(self) -> torch.Tensor:
        """Per feature: 0.5 for a categorical choice, min_distance (or 0.02) for a continuous value."""
        scales = []
        cont = self.min_distance if self.min_distance > 0 else 0.02
        for p in self.space.space.parameters:
            scales += [0.5] * len(p.choices) if isinstance(p, CategoricalParameter) else [cont]
        scales += [cont] * len(self._comp_elements)
        return torch.tensor(scales, dtype=self.dtype, device=self.device)

    def _repel(self, X: torch.Tensor) -> torch.Tensor:
        """A Gaussian bump of height `repulsion` on every measured or pending point: candidates spread
        to unmeasured points instead of piling onto the best measured one."""
        if self._anchors is None or self.repulsion <= 0:
            return torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
        d2 = (((X[:, None, :] - self._anchors[None]) / self._length_scales()) ** 2).sum(-1)
        return self.repulsion * torch.exp(-0.5 * d2).sum(-1)

    @torch.no_grad()
    def _mutate(self, params: dict[str, torch.Tensor], loss: torch.Tensor, gen: torch.Generator) -> None:
        """Replace the worst fraction by perturbed copies of the best (same fraction)."""
        B = loss.shape[0]
        k = int(B * self.mutate_fraction)
        if k < 1 or B < 2:
            return
        order = torch.argsort(loss.cpu())
        best, worst = order[:k], order[-k:]
        for v in params.values():
            noise = self.mutation_noise * torch.randn(k, *v.shape[1:], generator=gen, dtype=v.dtype).to(v.device)
            v[worst.to(v.device)] = v[best.to(v.device)] + noise

    def _hard_relaxed(self, params: Mapping[str, torch.Tensor], patterns: list[int | None]) -> dict[str, torch.Tensor]:
        """One-hot pattern weights and per-pattern distributions of the decoded candidates (for t)."""
        out: dict[str, torch.Tensor] = {}
        if self.roles is None:
            return out
        relaxed = self.relax(params, self.t_end)
        B = len(patterns)
        P = len(self.template.patterns)
        w = torch.zeros(B, P, dtype=self.dtype, device=self.device)
        w[torch.arange(B), torch.tensor(patterns, device=self.device)] = 1.0
        masks = self._site_masks()
        logits = params["logits"]
        masked = torch.where(masks[None], logits[:, None], torch.full_like(logits[:, None].expand(-1, P, -1, -1), -math.inf))
        q = torch.nn.functional.one_hot(masked.argmax(-1), logits.shape[-1]).to(self.dtype)
        out["per_pattern_hard"], out["pattern_hard"] = q, w
        out["per_pattern"], out["pattern_weights"] = relaxed["per_pattern"], relaxed["pattern_weights"]
        return out

    def _select(self, params: Mapping[str, torch.Tensor], history: list[Observation],
                pending: list[Observation], n: int) -> list[Candidate]:
        rows, X, patterns = self.decode(params)
        seen = {input_key(o.inputs) for o in [*history, *pending]}
        if len({input_key(r) for r in rows} - seen) < n and self.template.blocks:
            # The batch converged onto fewer unmeasured points than asked for (a small discrete space):
            # score as many random decodes as well, so the rest are still chosen by the model.
            gen = torch.Generator().manual_seed(self.seed * 104_729 + len(history) + len(pending))
            extra = {k: 4.0 * v.detach() for k, v in self._init_params(len(rows), gen).items()}
            params = {k: torch.cat([params[k], extra[k]]) for k in params}
            rows, X, patterns = self.decode(params)
        with torch.no_grad():
            hard = self._hard_relaxed(params, patterns)
            preds = self._all_preds(X, hard or None, hard=True)
            loss = self._losses(preds, self.kappa)
        taken = [self._features(o.inputs) for o in [*history, *pending]]
        order = torch.argsort(loss.cpu()).tolist()
        chosen: list[Candidate] = []
        continuous = bool(self._comp_elements) or any(
            not isinstance(p, CategoricalParameter) for p in self.space.space.parameters)
        for i in order:
            if len(chosen) >= n:
                break
            key = input_key(rows[i])
            if key in seen:
                continue
            if continuous and self.min_distance > 0 and taken:
                gap = (torch.stack(taken) - X[i]).abs().max(-1).values.min()
                if float(gap) < self.min_distance:
                    continue
            seen.add(key)
            taken.append(X[i])
            predicted = {name: Prediction(mean=float(m[i]), sd=float(s[i])) for name, (m, s) in preds.items()}
            pattern = "" if patterns[i] is None else f", charges {self.template.patterns.describe(patterns[i])}"
            source = "world model" if self.predictor is not None else f"ensemble of {len(history)} (κ={self.kappa:g})"
            how = "optimized" if i < self.n_candidates else "random (scored)"
            chosen.append(Candidate(
                inputs=rows[i], acquisition_value=float(-loss[i]), predicted=predicted,
                rationale=f"gradient: rank {len(chosen) + 1} of {len(rows)} decoded, {how}, {source}{pattern}"))
        if len(chosen) < n:
            taken_obs = [*history, *pending, *[Observation(inputs=c.inputs) for c in chosen]]
            chosen += self._space_filling(taken_obs, n - len(chosen), [], "optimized candidates repeated measured points")
        return chosen[:n]

    def _space_filling(self, history: list[Observation], n: int, pending: list[Observation], why: str) -> list[Candidate]:
        """Sobol points; with charge sites, random neutral decodes instead (Sobol ignores neutrality)."""
        if self.template.patterns is None:
            return [c.model_copy(update={"rationale": f"{why}; {c.rationale}"})
                    for c in self.fallback.propose(history, n, pending)]
        seen = {input_key(o.inputs) for o in [*history, *pending]}
        out: list[Candidate] = []
        gen = torch.Generator().manual_seed(self.seed * 7919 + len(history) + len(pending))
        for attempt in range(20):
            params = self._init_params(max(4 * n, 32), gen)
            params = {k: 4.0 * v.detach() for k, v in params.items()}  # sharper: varied, not central, picks
            rows, _, patterns = self.decode(params)
            for row, p in zip(rows, patterns):
                if len(out) >= n:
                    return out
                if input_key(row) in seen:
                    continue
                seen.add(input_key(row))
                charges = "" if p is None else f" ({self.template.patterns.describe(p)})"
                out.append(Candidate(inputs=row, rationale=f"{why}; random charge-neutral template{charges}"))
        return out
