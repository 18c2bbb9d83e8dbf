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
from botorch.models.transforms.input import Warp
from botorch.models.transforms.outcome import Standardize
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import MaternKernel, ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood, SumMarginalLogLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior

from athanor.messages import Candidate, Prediction
from athanor.planners.base import Observation, input_key
from athanor.planners.optim import optimize_box, optimize_simplex, score_pool
from athanor.planners.random import SobolStrategy
from athanor.planners.space import DesignSpace
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


def matern_kernel(dim: int) -> ScaleKernel:
    """Matérn-5/2 ARD kernel with a dimension-scaled Gamma lengthscale prior.

    BoTorch's default (RBF, LogNormal prior scaled with sqrt(d), Hvarfner et al. 2024) is made for
    many dimensions; measured on the Liang 2021 pools (benchmarks/README.md) the rougher Matérn
    kernel with a lighter-tailed Gamma prior of the same mode found the top rows sooner.
    """
    concentration = 3.0
    rate = (concentration - 1) / math.exp(math.sqrt(2) - 3) / math.sqrt(dim)
    prior = GammaPrior(concentration, rate)
    base = MaternKernel(nu=2.5, ard_num_dims=dim, lengthscale_prior=prior,
                        lengthscale_constraint=GreaterThan(2.5e-2, transform=None, initial_value=prior.mode))
    return ScaleKernel(base)


def composition_warp(dim: int, fraction_dims: list[int]) -> Warp | None:
    """Kumaraswamy input warping of composition fractions (Snoek et al. 2014).

    Properties of materials often change fastest near the simplex's edges (dilute dopants, a phase
    boundary near a pure end member); a learned warp lets a stationary kernel stretch those regions.
    Measured on the Liang 2021 pools (benchmarks/README.md): Perovskite EF 1.03 -> 1.40 and P3HT
    2.59 -> 2.85; on process-parameter pools (AgNP, CrossedBarrel) warping every input lost ground,
    so only fractions are warped.
    """
    if not fraction_dims:
        return None
    prior = LogNormalPrior(0.0, 0.75**0.5)  # BoTorch's tutorial default: centred on the identity
    return Warp(d=dim, indices=list(fraction_dims), concentration1_prior=prior, concentration0_prior=prior)


class BayesianStrategy:
    name = "bayesian"

    def __init__(self, space: DesignSpace, objectives: Sequence[Objective] = (), seed: int = 0,
                 constraints: Sequence[OutcomeConstraint] = (), n_init: int | None = None,
                 mc_samples: int = 128, num_restarts: int = 8, raw_samples: int = 256, steps: int = 60,
                 warp_outputs: bool = True, warp_inputs: bool | None = None, acquisition: str = "qLogNEI",
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
        self.warp_outputs = warp_outputs
        # Warping is cheap where the acquisition is scored on a finite pool; on a continuous simplex
        # it tripled proposal latency (1.08 -> 2.87 s at q=4, n=100, d=10), so there it is opt-in.
        self.warp_inputs = space.is_pool if warp_inputs is None else warp_inputs
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
            targets = [i for i, o in enumerate(self.objectives) if o.direction == "target"]
            self.warp = OutputWarp(Y.numpy(), enabled=self.warp_outputs, keep=targets)
            model = self._fit(X, torch.as_tensor(self.warp.forward(Y.numpy()), dtype=torch.double))
        except (ModelFittingError, RuntimeError, ValueError) as exc:  # numerics, not a campaign-ending bug
            return self._space_filling(history, n, pending, f"model fit failed ({type(exc).__name__}): exploring")
        self.model_version = f"gp-{len(X)}"
        acqf, label = self._acquisition(model, X, torch.as_tensor(self.warp.forward(Y.numpy())), pending)
        picks, values, pool_rows = self._maximize(acqf, n, history, pending)
        proposals = self._candidates(model, picks, values, pool_rows, label, len(measured), len(pending))
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

    def _fit(self, X: torch.Tensor, Y: torch.Tensor) -> SingleTaskGP | ModelListGP:
        cat_dims = self.space.cat_dims
        models = []
        for j in range(Y.shape[1]):
            y = Y[:, j:j + 1]
            warp = composition_warp(X.shape[-1], self.space.fraction_dims) if self.warp_inputs else None
            if cat_dims:
                models.append(MixedSingleTaskGP(X, y, cat_dims=cat_dims, input_transform=warp,
                                                outcome_transform=Standardize(m=1)))
            else:
                models.append(SingleTaskGP(X, y, covar_module=matern_kernel(X.shape[-1]), input_transform=warp,
                                           outcome_transform=Standardize(m=1)))
        if len(models) == 1:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(models[0].likelihood, models[0]))
            return models[0]
        model = ModelListGP(*models)
        fit_gpytorch_mll(SumMarginalLogLikelihood(model.likelihood, model))
        return model

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
                    label: str, n_measured: int, n_pending: int) -> list[Candidate]:
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
                           + f": predicted {summary}; GP on {n_measured} measured, {n_pending} pending"),
            ))
        return out
