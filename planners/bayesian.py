"""Bayesian optimization with BoTorch: GP surrogates, log-space noisy acquisition, exact pool scoring.

One objective: qLogNEI. Two or three: qLogNEHVI. More: qLogNParEGO. Targets (|y − t| ≤ tol) are
modelled on the raw output and scored as −|y − t| by the MC objective, so predictions stay in the
measured units. Outcome constraints get their own GP and enter the acquisition as feasibility
(probability-weighted), not as penalties. Points in flight are pending points.

Numerics: double precision, inputs in [0, 1] (categoricals as choice indices for a mixed kernel),
outputs standardized per model; identical inputs are averaged; a constant objective or a failed fit
falls back to space-filling with the reason in the rationale, never to an exception.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from botorch.acquisition.logei import qLogExpectedImprovement, qLogNoisyExpectedImprovement
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import GenericMCMultiOutputObjective
from botorch.acquisition.multi_objective.parego import qLogNParEGO
from botorch.acquisition.objective import GenericMCObjective
from botorch.exceptions import ModelFittingError
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, ModelListGP, SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.mlls import ExactMarginalLogLikelihood

from athanor.messages import Candidate, Prediction
from athanor.planners.base import Observation, input_key
from athanor.planners.optim import optimize_box, optimize_simplex, score_pool
from athanor.planners.random import SobolStrategy
from athanor.planners.space import DesignSpace
from athanor.planners.surrogates import (KERNELS, Recipe, checkpoint, composition_warp, fit_gp, hyperparameters,
                                         loo_log_density)
from athanor.spec import Objective, OutcomeConstraint


def _utility(z: torch.Tensor, objective: Objective, target: float | None = None) -> torch.Tensor:
    """Higher is better; `target` is the objective's target in the (warped) units of `z`."""
    if objective.direction == "maximize":
        return z
    if objective.direction == "minimize":
        return -z
    return -(z - (objective.target if target is None else target)).abs()


class OutputWarp:
    """A monotone Yeo-Johnson warp per output, fitted to the data (scikit-learn's PowerTransformer),
    then standardized.

    Measured properties are often skewed over orders of magnitude (conductivities, instability
    indices); a GP fits their warped values far better. Monotone, so the best point of a maximized
    or minimized output is unchanged and constraint bounds keep their meaning when warped alike.
    Columns in `keep` (targets: |y − t| must be judged in measured units) are only standardized.
    """

    def __init__(self, Y: np.ndarray, enabled: bool = True, keep: Sequence[int] = ()):
        from sklearn.preprocessing import PowerTransformer

        self.enabled = enabled
        self.raw_mean, self.raw_sd = Y.mean(axis=0), np.where(Y.std(axis=0) > 0, Y.std(axis=0), 1.0)
        self._power = PowerTransformer(method="yeo-johnson", standardize=False)
        if enabled:
            with np.errstate(all="ignore"):
                self._power.fit(Y)
            self._power.lambdas_[list(keep)] = 1.0  # Yeo-Johnson with lambda 1 is the identity
            warped = self._forward_power(Y)
            self.mean, self.sd = warped.mean(axis=0), np.where(warped.std(axis=0) > 0, warped.std(axis=0), 1.0)

    def _forward_power(self, Y: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return self._power.transform(Y)

    def forward(self, Y: np.ndarray) -> np.ndarray:
        return (self._forward_power(Y) - self.mean) / self.sd if self.enabled else Y

    def log_jacobian(self, y: np.ndarray, column: int) -> np.ndarray:
        """log |dz/dy| of the forward map of one column: what a density over z gains as one over y."""
        y = np.asarray(y, dtype=float)
        if not self.enabled:
            return np.zeros_like(y)
        lam = self._power.lambdas_[column]
        with np.errstate(all="ignore"):
            slope = np.where(y >= 0, (lam - 1) * np.log1p(np.abs(y)), (1 - lam) * np.log1p(np.abs(y)))
        return slope - math.log(self.sd[column])

    def value(self, column: int, y: float) -> float:
        row = np.array(self.raw_mean, dtype=float)
        row[column] = y
        return float(self.forward(row[None, :])[0, column])

    def backward(self, Z: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return Z
        with np.errstate(all="ignore"):
            return self._power.inverse_transform(Z * self.sd + self.mean)

    def to_measured(self, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and sd in measured units: the median maps through the warp, the sd is half
        the mapped ±1 sd interval. Where the inverse warp has no value (it is bounded for some
        shapes), fall back to a linear map through the data's own mean and sd."""
        mean = self.backward(mu)
        sd = np.abs(self.backward(mu + sigma) - self.backward(mu - sigma)) / 2
        bad = ~(np.isfinite(mean) & np.isfinite(sd))
        mean = np.where(bad, self.raw_mean + mu * self.raw_sd, mean)
        sd = np.where(bad, sigma * self.raw_sd, sd)
        return mean, sd


class BayesianStrategy:
    name = "bayesian"

    def __init__(self, space: DesignSpace, objectives: Sequence[Objective] = (), seed: int = 0,
                 constraints: Sequence[OutcomeConstraint] = (), n_init: int | None = None,
                 mc_samples: int = 128, num_restarts: int = 8, raw_samples: int = 256, steps: int = 60,
                 warp_outputs: bool | str = True, warp_inputs: bool | str | None = None, acquisition: str = "qLogNEI",
                 kernel: str = "matern", choose_from: int = 8, early: str | None = None, margin: float = 3.0,
                 **_options: Any):
        if not objectives:
            raise ValueError("the Bayesian designer needs at least one objective")
        self.space = space
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.seed = seed
        self.outputs = [o.name for o in self.objectives]
        self.outputs += [c.name for c in self.constraints if c.name not in self.outputs]
        self.n_init = n_init if n_init is not None else (2 if space.is_pool else min(space.dim + 1, 10))
        self.mc_samples, self.num_restarts, self.raw_samples, self.steps = mc_samples, num_restarts, raw_samples, steps
        if acquisition not in ("qLogNEI", "qLogEI"):
            raise ValueError(f"designer.options.acquisition must be qLogNEI or qLogEI, not {acquisition!r}")
        self.acquisition = acquisition
        if kernel not in ("auto", *KERNELS):
            raise ValueError(f"designer.options.kernel must be auto or one of {', '.join(KERNELS)}, not {kernel!r}")
        for option, value in (("warp_outputs", warp_outputs), ("warp_inputs", warp_inputs)):
            if value not in ("auto", True, False, None):
                raise ValueError(f"designer.options.{option} must be auto, true or false, not {value!r}")
        # Input warping is decided on pools; on a continuous simplex it tripled proposal latency
        # (1.08 -> 2.87 s at q=4, n=100, d=10), so there it is opt-in. Only fractions are warped.
        if warp_inputs is None:
            warp_inputs = "auto" if space.is_pool else False
        if not space.fraction_dims:
            warp_inputs = False
        # The portfolio: every recipe the options leave open, chosen among by leave-one-out density
        # (planners/surrogates.py) from `choose_from` measurements on; before that, `early`.
        self.portfolio = [Recipe(k, wo, wi) for wi in ((False, True) if warp_inputs == "auto" else (warp_inputs,))
                          for k in (KERNELS if kernel == "auto" else (kernel,))
                          for wo in ((False, True) if warp_outputs == "auto" else (warp_outputs,))]
        names = [r.name for r in self.portfolio]
        if early is not None and early not in names:
            raise ValueError(f"designer.options.early must be one of the recipes the options leave open "
                             f"({', '.join(names)}), not {early!r}")
        wanted = early or "matern+outwarp"
        self.early = self.portfolio[names.index(wanted)] if wanted in names else self.portfolio[0]
        self.choose_from = max(int(choose_from), 3)
        self.margin = float(margin)
        self._choice: tuple[bytes, Recipe, Any, OutputWarp] | None = None  # the last checkpoint's
        self.fallback = SobolStrategy(space, objectives, seed)
        self.model_version: str | None = None

    # --- the strategy contract ------------------------------------------------------------------
    def propose(self, history: list[Observation], n: int, pending: list[Observation]) -> list[Candidate]:
        measured = [o for o in history if not o.failed and all(
            isinstance(o.values.get(k), (int, float)) and math.isfinite(o.values[k]) for k in self.outputs)]
        if len(measured) < self.n_init:
            return self._space_filling(history, n, pending, f"initial design ({len(measured)} of {self.n_init} measured)")
        X, Y = self._training_data(measured)
        if all(np.ptp(Y[:, i]) <= 1e-12 * (1 + abs(Y[:, i]).max()) for i in range(len(self.objectives))):
            return self._space_filling(history, n, pending, "every objective constant so far: exploring")
        torch.manual_seed(self.seed + len(history))
        try:
            recipe, why, model = self._model(measured, X, Y)
        except (ModelFittingError, RuntimeError, ValueError) as exc:  # numerics, not a campaign-ending bug
            return self._space_filling(history, n, pending, f"model fit failed ({type(exc).__name__}): exploring")
        self.model_version = f"gp-{recipe.name}-{len(X)}"
        acqf, label = self._acquisition(model, X, torch.as_tensor(self.warp.forward(Y.numpy())), pending)
        picks, values, pool_rows = self._maximize(acqf, n, history, pending)
        proposals = self._candidates(model, picks, values, pool_rows, label, f"{recipe.name} GP ({why})",
                                     len(measured), len(pending))
        return self._distinct(proposals, history, pending)

    # --- pieces ---------------------------------------------------------------------------------
    def _space_filling(self, history: list[Observation], n: int, pending: list[Observation], why: str) -> list[Candidate]:
        return [c.model_copy(update={"rationale": f"{why}; {c.rationale}"})
                for c in self.fallback.propose(history, n, pending)]

    def _distinct(self, proposals: list[Candidate], history: list[Observation],
                  pending: list[Observation]) -> list[Candidate]:
        """Integer and categorical inputs are optimized relaxed and rounded after, so two picks can
        land on one point, or on a measured one: replace those with space-filling points."""
        seen = {input_key(o.inputs) for o in [*history, *pending]}
        distinct, repeats = [], 0
        for c in proposals:
            if c.pool_index is None and input_key(c.inputs) in seen:
                repeats += 1
                continue
            seen.add(input_key(c.inputs))
            distinct.append(c)
        taken = [*history, *pending, *[Observation(inputs=c.inputs) for c in distinct]]
        for _ in range(20):  # a small discrete space may need a few space-filling draws
            if not repeats:
                break
            for c in self._space_filling(taken, repeats, [], "rounding repeated a point"):
                taken.append(Observation(inputs=c.inputs))
                if input_key(c.inputs) not in seen:
                    seen.add(input_key(c.inputs))
                    distinct.append(c)
                    repeats -= 1
        return distinct

    def _training_data(self, measured: list[Observation]) -> tuple[torch.Tensor, torch.Tensor]:
        X = np.array([self.space.to_features(o.inputs) for o in measured])
        Y = np.array([[float(o.values[k]) for k in self.outputs] for o in measured])
        # Repeated inputs are averaged: one row per distinct point keeps the kernel matrix well posed.
        keys, inverse = np.unique(np.round(X, 12), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        Y_mean = np.stack([Y[inverse == i].mean(axis=0) for i in range(len(keys))])
        X_mean = np.stack([X[inverse == i][0] for i in range(len(keys))])
        return torch.as_tensor(X_mean, dtype=torch.double), torch.as_tensor(Y_mean, dtype=torch.double)

    def _model(self, measured: list[Observation], X: torch.Tensor, Y: torch.Tensor) -> tuple[Recipe, str, Any]:
        """The recipe for these measurements, the reason, and the fitted model (sets self.warp)."""
        targets = [i for i, o in enumerate(self.objectives) if o.direction == "target"]
        init = None
        if len(self.portfolio) == 1 or self.space.cat_dims:
            recipe, why = self.portfolio[0] if len(self.portfolio) == 1 else self.early, "as configured"
        elif len(measured) < self.choose_from:
            recipe, why = self.early, f"the early recipe until {self.choose_from} measured"
        else:
            at = checkpoint(len(measured), self.choose_from)
            recipe, model, warp = self._choose(measured[:at], targets)
            why = f"best leave-one-out density at {at} measured"
            if at == len(measured):
                self.warp = warp
                return recipe, why, model
            init = [hyperparameters(m) for m in (model.models if isinstance(model, ModelListGP) else [model])]
        self.warp = OutputWarp(Y.numpy(), enabled=recipe.warp_outputs, keep=targets)
        z = torch.as_tensor(self.warp.forward(Y.numpy()), dtype=torch.double)
        return recipe, why, self._fit(X, z, recipe, init)

    def _choose(self, measured: list[Observation], targets: list[int]) -> tuple[Recipe, Any, OutputWarp]:
        """Fit the recipes to these measurements and keep the one whose leave-one-out predictions
        give the first objective's values the highest density, in measured units. Input warping is
        the slow fit (two parameters per fraction, slow to converge), so it is tried only in the
        best plain recipe. Cached for the checkpoint: the recipe, its model and its output warp."""
        X, Y = self._training_data(measured)
        key = X.numpy().tobytes() + Y.numpy().tobytes()
        if self._choice is not None and self._choice[0] == key:
            return self._choice[1:]

        def scored(recipe: Recipe) -> tuple[float, Recipe, Any, OutputWarp] | None:
            warp = OutputWarp(Y.numpy(), enabled=recipe.warp_outputs, keep=targets)
            try:
                model = self._fit(X, torch.as_tensor(warp.forward(Y.numpy()), dtype=torch.double), recipe)
                first = model.models[0] if isinstance(model, ModelListGP) else model
                score = float(loo_log_density(first).sum() + warp.log_jacobian(Y[:, 0].numpy(), 0).sum())
            except (ModelFittingError, RuntimeError, ValueError):
                return None
            return (score, recipe, model, warp) if math.isfinite(score) else None

        plain = [r for r in self.portfolio if not r.warp_inputs] or self.portfolio
        results = [r for r in map(scored, plain) if r is not None]
        if results:
            lead = max(results, key=lambda r: r[0])[1]
            results += [r for r in map(scored, [w for w in self.portfolio if w.warp_inputs and w not in plain and
                                                (w.kernel, w.warp_outputs) == (lead.kernel, lead.warp_outputs)])
                        if r is not None]
        if not results:
            raise ModelFittingError("no recipe of the portfolio could be fitted")
        best = max(results, key=lambda r: r[0])  # the first of equals: the portfolio's order
        # A few points' LOO densities are noisy: leave the default recipe only on strong evidence
        # (`margin` nats in total, a likelihood ratio of e^3 ≈ 20 by default).
        default = next((r for r in results if r[1] == self.early), None)
        if default is not None and best[0] - default[0] < self.margin:
            best = default
        self._choice = (key, best[1], best[2], best[3])
        return self._choice[1:]

    def _fit(self, X: torch.Tensor, Y: torch.Tensor, recipe: Recipe,
             init: list[dict[str, torch.Tensor]] | None = None) -> SingleTaskGP | ModelListGP:
        fractions = self.space.fraction_dims if recipe.warp_inputs else []
        models = []
        for j in range(Y.shape[1]):
            y = Y[:, j:j + 1]
            if self.space.cat_dims:
                model = MixedSingleTaskGP(X, y, cat_dims=self.space.cat_dims,
                                          input_transform=composition_warp(X.shape[-1], fractions),
                                          outcome_transform=Standardize(m=1))
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            else:
                model = fit_gp(X, y, recipe.kernel, fractions, init[j] if init else None)
            models.append(model)
        return models[0] if len(models) == 1 else ModelListGP(*models)

    def _constraint_callables(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """BoTorch's convention: feasible where the callable is <= 0."""
        out: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for c in self.constraints:
            k = self.outputs.index(c.name)
            if c.upper is not None:
                out.append(lambda Z, k=k, u=self.warp.value(k, c.upper): Z[..., k] - u)
            if c.lower is not None:
                out.append(lambda Z, k=k, lo=self.warp.value(k, c.lower): lo - Z[..., k])
        return out

    def _acquisition(self, model: Any, X: torch.Tensor, Y: torch.Tensor, pending: list[Observation]):
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]), seed=self.seed)
        X_pending = None
        if pending:
            X_pending = torch.as_tensor(np.array([self.space.to_features(p.inputs) for p in pending]), dtype=torch.double)
        constraints = self._constraint_callables() or None
        objectives = self.objectives
        targets = [self.warp.value(i, o.target) if o.target is not None else None for i, o in enumerate(objectives)]
        if len(objectives) == 1:
            objective = GenericMCObjective(lambda Z, X=None: _utility(Z[..., 0], objectives[0], targets[0]))
            if self.acquisition == "qLogEI":  # plug-in incumbent: the best posterior mean measured
                with torch.no_grad():
                    best = objective(model.posterior(X).mean.unsqueeze(0)).max()
                acqf = qLogExpectedImprovement(model, best_f=best, sampler=sampler, objective=objective,
                                               constraints=constraints, X_pending=X_pending)
                return acqf, "qLogEI"
            acqf = qLogNoisyExpectedImprovement(model, X_baseline=X, sampler=sampler, objective=objective,
                                                constraints=constraints, X_pending=X_pending, prune_baseline=True)
            return acqf, "qLogNEI"
        multi = GenericMCMultiOutputObjective(
            lambda Z, X=None: torch.stack([_utility(Z[..., i], o, targets[i]) for i, o in enumerate(objectives)], dim=-1))
        if len(objectives) <= 3:
            utilities = multi(Y.unsqueeze(0)).squeeze(0)
            spread = (utilities.max(dim=0).values - utilities.min(dim=0).values).clamp(min=1e-9)
            ref_point = utilities.min(dim=0).values - 0.1 * spread
            acqf = qLogNoisyExpectedHypervolumeImprovement(model, ref_point=ref_point, X_baseline=X, sampler=sampler,
                                                           objective=multi, constraints=constraints,
                                                           X_pending=X_pending, prune_baseline=True)
            return acqf, "qLogNEHVI"
        acqf = qLogNParEGO(model, X_baseline=X, sampler=sampler, objective=multi, constraints=constraints,
                           X_pending=X_pending, prune_baseline=True)
        return acqf, "qLogNParEGO"

    def _maximize(self, acqf: Any, n: int, history: list[Observation], pending: list[Observation]):
        space = self.space
        generator = torch.Generator().manual_seed(self.seed * 100_003 + len(history))
        if space.is_pool:
            taken = {o.pool_index for o in [*history, *pending] if o.pool_index is not None}
            rows = np.array([i for i in range(len(space.pool)) if i not in taken], dtype=int)
            if len(rows) == 0:
                return torch.empty(0, space.dim, dtype=torch.double), [], []
            free = torch.as_tensor(space.pool_unit()[rows], dtype=torch.double)
            chosen, values = score_pool(acqf, free, n)
            return free[chosen], values, [int(rows[i]) for i in chosen]
        cardinalities = [len(space.space.parameters[j].choices) for j in space.cat_dims]
        if space.comp_dims:
            low, high = space.comp_bounds
            X, values = optimize_simplex(acqf, space.dim, n, space.comp_dims, low, high, space.cat_dims,
                                         cardinalities, self.num_restarts, self.raw_samples, self.steps, generator)
        else:
            X, values = optimize_box(acqf, space.dim, n, space.cat_dims, cardinalities, self.num_restarts,
                                     self.raw_samples, rng=np.random.default_rng([self.seed, len(history)]))
        return X, values, [None] * len(X)

    def _candidates(self, model: Any, X: torch.Tensor, values: list[float], pool_rows: list[int | None],
                    label: str, surrogate: str, n_measured: int, n_pending: int) -> list[Candidate]:
        if len(X) == 0:
            return []
        with torch.no_grad():
            posterior = model.posterior(X)
            mu, sigma = posterior.mean.numpy(), posterior.variance.clamp(min=0).sqrt().numpy()
        mean, sd = self.warp.to_measured(mu, sigma)
        out = []
        for i, (x, value, row) in enumerate(zip(X.numpy(), values, pool_rows)):
            inputs = self.space.pool_inputs(row) if row is not None else self.space.from_features(x)
            predicted = {o.name: Prediction(mean=float(mean[i, j]), sd=float(sd[i, j]))
                         for j, o in enumerate(self.objectives)}
            summary = ", ".join(f"{k} {p.mean:.4g} ± {p.sd:.2g}" for k, p in predicted.items())
            acq = value if math.isfinite(value) else None
            out.append(Candidate(
                inputs=inputs, pool_index=row, acquisition_value=acq, predicted=predicted,
                rationale=(f"{label} pick {i + 1} of {len(X)}" + (f" (log value {acq:.3g})" if acq is not None else "")
                           + f": predicted {summary}; {surrogate} on {n_measured} measured, {n_pending} pending"),
            ))
        return out
