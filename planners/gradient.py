"""Gradient strategy: many candidates optimized at once by gradient descent on relaxed inputs (SMOACS).

A candidate is a set of learnable tensors, one row per candidate in a batch (the representation lives
in relaxation.py; this module fits the predictor and optimizes):

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

Predictor: either `predictor`, a callable given by the campaign (a world's differentiable model: an
oracle, for baselines) mapping features X [B, d] to {output: mean [B]} or {output: (mean [B], sd [B])},
or — when none is given — a DeepEnsemble fitted on the history, explored optimistically (mean ± κ·sd).
With a `prior` (a callable like `predictor`: an approximate physical model, known to be wrong), the
ensemble learns the prior's error instead of the property, and before `n_init` measurements the
prior alone (with sd `prior_sd`) steers the first batch instead of a space-filling design. Option
`model: gp` replaces the ensemble by a Gaussian process (planners/gp.py), for few measurements.
`target_pull` (default 0) adds pull·((μ − t)/tol)² to a target's loss, so that among candidates the
optimism puts inside a narrow window the ones the mean puts closest win. Features: per
space parameter in order, a categorical as its distribution over its choices (one-hot when decoded),
a continuous/integer parameter scaled to [0, 1]; then the composition's fractions in the space's
element order. A callable may carry `.device` and `.dtype` attributes (default: cpu when it has no
`.device`, float64). A structure-aware model (CHGNet through a crystal template,
chgnet_predictor.py) also has `bind(candidates)`, called once to read the sites and charge patterns,
and `latent_dim`: it then gets `model(X, latent=..., relaxed=...)` with per-candidate latent variables
(its lattice) that the batch optimizes alongside the site logits, and may return a `penalty` [B]
added to each candidate's loss (the lattice's relaxation down the energy).

Losses (per candidate, summed): maximize → −(μ+κσ)/s, minimize → (μ−κσ)/s, with s the measured
spread; target t ± tol → a hinge outside the window shrunk by a margin; outcome constraints → hinges
outside [lower, upper] shrunk by a margin. The Goldschmidt tolerance factor is computed in closed form
from Shannon radii of the site distributions when a `tolerance_factor` constraint exists and the
sites are recognizable as A, B, X (names a_site/b_site/anion or the `roles` option).

Throughput: after `propose` (or `optimize`), `last_timing` holds {"candidates", "steps", "rounds",
"seconds", "candidate_optimizations_per_s"} and, after `propose`, "distinct" (how many distinct
candidates the batch decoded to): one candidate optimization = one candidate taken through
all steps and rounds, so the rate is n_candidates / wall time of the optimization (model fit excluded).
On CPU, `propose` runs with one intra-op thread (option `single_thread`), restored afterwards.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from athanor.messages import Candidate, Prediction
from athanor.planners.base import Observation, input_key
from athanor.planners.ensemble import DeepEnsemble, default_device
from athanor.planners.gp import GaussianProcess
from athanor.planners.random import SobolStrategy
from athanor.planners.relaxation import RelaxedCandidates, shannon_radius
from athanor.planners.space import DesignSpace
from athanor.spec import CategoricalParameter, Objective, OutcomeConstraint

__all__ = ["GradientStrategy", "shannon_radius"]

Predictor = Callable[[torch.Tensor], Mapping[str, Any]]


class GradientStrategy:
    name = "gradient"

    def __init__(self, space: DesignSpace, objectives: Sequence[Objective] = (), seed: int = 0,
                 constraints: Sequence[OutcomeConstraint] = (), predictor: Predictor | str | None = None,
                 sites: Mapping[str, Any] | None = None, n_candidates: int = 256, steps: int = 200,
                 rounds: int = 3, lr: float = 0.1, t_start: float = 1.0, t_end: float = 0.01,
                 kappa: float = 1.0, n_init: int = 3, mutate_fraction: float = 0.25, mutation_noise: float = 0.5,
                 margin: float = 0.25, min_distance: float = 0.02, repulsion: float = 2.0, roles: Mapping[str, str] | None = None,
                 ensemble: Mapping[str, Any] | None = None, device: str | None = None, single_thread: bool = True,
                 prior: Predictor | str | None = None, prior_sd: float = 0.1, model: str = "ensemble",
                 target_pull: float = 0.0,
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
        if isinstance(prior, str):
            warnings.warn(f"designer.options.prior {prior!r} was not replaced by a model; learning from the data alone",
                          RuntimeWarning, stacklevel=2)
            prior = None
        self.prior, self.prior_sd = prior, float(prior_sd)
        if model not in ("ensemble", "gp"):
            raise ValueError(f"designer.options.model must be ensemble or gp, not {model!r}")
        self.model_kind = model
        self.target_pull = float(target_pull)
        self._model: DeepEnsemble | GaussianProcess | None = None
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
            self.dtype = torch.float32 if model == "ensemble" else torch.float64
        self.candidates = RelaxedCandidates(space, sites or {}, self.constraints, roles, self.device, self.dtype)
        self.template, self.roles = self.candidates.template, self.candidates.roles
        for model in (self.predictor, self.prior):
            if hasattr(model, "bind"):  # a structure-aware model reads the sites and charge patterns
                model.bind(self.candidates)
        self.latent_dim = int(getattr(self.predictor or self.prior, "latent_dim", 0))
        self.outputs = [o.name for o in self.objectives]
        self.outputs += [c.name for c in self.constraints if c.name not in self.outputs]
        self.fallback = SobolStrategy(space, objectives, seed)
        self.model_version: str | None = None
        self.last_timing: dict[str, float] = {}

    # --- prediction and loss ----------------------------------------------------------------------
    @staticmethod
    def _call(model: Predictor, X: torch.Tensor, relaxed: Mapping[str, torch.Tensor] | None,
              latent: torch.Tensor | None) -> Mapping[str, Any]:
        if getattr(model, "latent_dim", 0):
            return model(X, latent=latent, relaxed=relaxed)
        return model(X)

    def _predict(self, X: torch.Tensor, relaxed: Mapping[str, torch.Tensor] | None = None,
                 latent: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.predictor is not None:
            raw = self._call(self.predictor, X, relaxed, latent)
            out = {}
            for name, value in raw.items():
                if isinstance(value, (tuple, list)):
                    mean, sd = value
                else:
                    mean, sd = value, torch.zeros_like(value)
                out[name] = (mean.reshape(-1), sd.reshape(-1))
            return out
        prior = ({k: v.reshape(-1) for k, v in self._call(self.prior, X, relaxed, latent).items()}
                 if self.prior is not None else {})
        penalty = {"penalty": (prior["penalty"], torch.zeros_like(prior["penalty"]))} if "penalty" in prior else {}
        if self._model is None:  # the prior alone, before the first measurements
            return {**{k: (v, torch.full_like(v, self.prior_sd)) for k, v in prior.items() if k != "penalty"}, **penalty}
        mean, sd = self._model.predict(X)
        return {**{name: (mean[:, i] + prior[name].to(mean.dtype) if name in prior else mean[:, i], sd[:, i])
                   for i, name in enumerate(self._model_outputs)}, **penalty}

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
                # Among candidates the optimism puts inside, prefer those the mean puts closest: with a
                # narrow window, ties at zero loss otherwise go to the most uncertain.
                loss = loss + self.target_pull * ((mu - o.target) / o.tolerance) ** 2
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

    def _all_preds(self, X: torch.Tensor, relaxed: Mapping[str, torch.Tensor] | None, hard: bool = False,
                   latent: torch.Tensor | None = None):
        # Decoded candidates (hard) are given to a model as their one-hot feature rows alone.
        preds = self._predict(X, None if hard else relaxed, latent)
        if self.roles is not None and relaxed is not None:
            tf = self.candidates.tolerance_factor(relaxed, hard=relaxed.get("pattern_hard") if hard else None)
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
            self._model = None
            if len(measured) < self.n_init:
                if not self._prior_covers_objectives():
                    return self._space_filling(history, n, pending, f"initial design ({len(measured)} of {self.n_init} measured)")
                self.model_version = f"prior-{getattr(self.prior, 'version', type(self.prior).__name__)}"
            else:
                X = torch.stack([self.candidates.features(o.inputs) for o in measured])
                Y = torch.tensor([[float(o.values[k]) for k in self._fit_outputs()] for o in measured], dtype=self.dtype)
                if self.prior is not None:  # the ensemble learns the prior's error, not the property
                    with torch.no_grad():
                        prior = self.prior(X)
                    for j, k in enumerate(self._fit_outputs()):
                        if k in prior:
                            Y[:, j] -= prior[k].reshape(-1).to(Y.dtype)
                if self.model_kind == "gp":
                    self._model = GaussianProcess(seed=self.seed + len(history)).fit(X, Y)
                else:
                    opts = {"seed": self.seed + len(history), **self.ensemble_options}
                    self._model = DeepEnsemble(device=str(self.device), **opts).fit(X, Y)
                self._model_outputs = self._fit_outputs()
                self.model_version = f"{self.model_kind}-{self._model.version}" + ("+prior" if self.prior is not None else "")
        else:
            self.model_version = f"predictor-{getattr(self.predictor, 'version', type(self.predictor).__name__)}"
        done = [*history, *pending]
        self._anchors = torch.stack([self.candidates.features(o.inputs) for o in done]) if done else None
        params, _ = self.optimize(len(history) + len(pending))
        return self._select(params, history, pending, n)

    def _prior_covers_objectives(self) -> bool:
        if self.prior is None:
            return False
        probe = torch.full((1, len(self.candidates.length_scales(self.min_distance))), 0.5, dtype=self.dtype)
        with torch.no_grad():
            given = self.prior(probe)
        return all(o.name in given for o in self.objectives)

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
        params = self.candidates.init_params(B, gen)
        if self.latent_dim:  # a model's own per-candidate variables (CHGNet: the lattice), from its start
            params["latent"] = torch.zeros(B, self.latent_dim, dtype=self.dtype, device=self.device, requires_grad=True)
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
            relaxed = self.candidates.relax(params, T)
            preds = self._all_preds(relaxed["features"], relaxed, latent=params.get("latent"))
            penalty = preds.pop("penalty", None)
            loss = self._losses(preds, kappa, weights)
            if penalty is not None:  # the model's own term (CHGNet: the lattice relaxes down the energy)
                loss = loss + penalty[0].to(loss.dtype)
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

    def _repel(self, X: torch.Tensor) -> torch.Tensor:
        """A Gaussian bump of height `repulsion` on every measured or pending point: candidates spread
        to unmeasured points instead of piling onto the best measured one."""
        if self._anchors is None or self.repulsion <= 0:
            return torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
        d2 = (((X[:, None, :] - self._anchors[None]) / self.candidates.length_scales(self.min_distance)) ** 2).sum(-1)
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
        for name, v in params.items():
            noise = self.mutation_noise * torch.randn(k, *v.shape[1:], generator=gen, dtype=v.dtype).to(v.device)
            if name == "latent":  # a copy keeps its relaxed lattice: only the chemistry is perturbed
                noise = torch.zeros_like(noise)
            v[worst.to(v.device)] = v[best.to(v.device)] + noise

    def _select(self, params: Mapping[str, torch.Tensor], history: list[Observation],
                pending: list[Observation], n: int) -> list[Candidate]:
        params = {k: v for k, v in params.items() if k != "latent"}  # decoded candidates are re-relaxed by the model
        rows, X, patterns = self.candidates.decode(params)
        if self.last_timing:
            self.last_timing["distinct"] = len({input_key(r) for r in rows})
        seen = {input_key(o.inputs) for o in [*history, *pending]}
        if len({input_key(r) for r in rows} - seen) < n and self.template.blocks:
            # The batch converged onto fewer unmeasured points than asked for (a small discrete space):
            # score as many random decodes as well, so the rest are still chosen by the model.
            gen = torch.Generator().manual_seed(self.seed * 104_729 + len(history) + len(pending))
            extra = {k: 4.0 * v.detach() for k, v in self.candidates.init_params(len(rows), gen).items()}
            params = {k: torch.cat([params[k], extra[k]]) for k in params}
            rows, X, patterns = self.candidates.decode(params)
        with torch.no_grad():
            hard = self.candidates.hard_relaxed(params, patterns, self.t_end)
            preds = self._all_preds(X, hard or None, hard=True)
            loss = self._losses(preds, self.kappa)
        taken = [self.candidates.features(o.inputs) for o in [*history, *pending]]
        order = torch.argsort(loss.cpu()).tolist()
        chosen: list[Candidate] = []
        continuous = bool(self.candidates.comp_elements) or any(
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
            if self.predictor is not None:
                source = getattr(self.predictor, "description", "world model (oracle)")
            elif self._model is None:
                source = "prior alone"
            else:
                source = f"{self.model_kind} of {len(history)} (κ={self.kappa:g})" + (" correcting the prior" if self.prior else "")
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
            params = self.candidates.init_params(max(4 * n, 32), gen)
            params = {k: 4.0 * v.detach() for k, v in params.items()}  # sharper: varied, not central, picks
            rows, _, patterns = self.candidates.decode(params)
            for row, p in zip(rows, patterns):
                if len(out) >= n:
                    return out
                if input_key(row) in seen:
                    continue
                seen.add(input_key(row))
                charges = "" if p is None else f" ({self.template.patterns.describe(p)})"
                out.append(Candidate(inputs=row, rationale=f"{why}; random charge-neutral template{charges}"))
        return out
