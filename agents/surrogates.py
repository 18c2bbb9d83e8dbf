"""The learner's modelling, as plain functions: surrogate fits, cross-validation, and stall detection.

Two surrogates per campaign:

* ``gp``: the Gaussian processes the Bayesian designer uses by default (its `early` recipe, built by
  `BayesianStrategy._fit` on outputs warped by its `OutputWarp`, one GP per output), predictions
  mapped back to measured units.
* ``ensemble``: a `DeepEnsemble` (torch MLPs with Gaussian heads, differentiable in the inputs) from
  the design space's features (composition fractions, scaled parameters, one-hot categoricals) to
  every output at once.

`cross_validate` scores both by K-fold cross-validation (K = min(5, n), folds drawn from the
campaign seed) on the distinct measured points, per output:

    cv_rmse:<model>:<output>     root mean squared held-out error, measured units
    cv_r2:<model>:<output>       1 - SSE / SST of the held-out predictions
    coverage68:<model>:<output>  fraction of held-out points within ±1 sd
    coverage95:<model>:<output>  fraction within ±1.96 sd
    cv_nll:<model>:<output>      mean Gaussian NLL of held-out points, in units of the output's sd

Every number is finite (the wire forbids NaN/inf); a model that fails is left out with a note.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from athanor.objectives import feasible, utility
from athanor.planners.space import DesignSpace
from athanor.spec import Objective, OutcomeConstraint

MODELS = ("gp", "ensemble")
SHORT = {"gp": "gp", "ensemble": "ens"}
# Models whose sd the learner recalibrates (the deep ensemble, measured 2-3x underconfident on smooth
# data); the GP is reported as the designer uses it.
RECALIBRATED = ("ensemble",)
DONE_STATES = ("characterized", "learned", "failed")


# --- options ---------------------------------------------------------------------------------------


DESIGNER_MODELS = {"bayesian": ("gp",), "gradient": ("ensemble",)}


@dataclass(frozen=True)
class LearnerOptions:
    """The campaign's `learner:` section (all optional).

    stall_after: measured samples without a relative improvement > min_improvement of the first
        objective's best feasible value before stopping is recommended (default max(10, 5 × batch
        size)); checked only once 2 × stall_after samples are measured. 0 disables it.
    min_improvement: relative improvement that counts (default 0.01).
    surrogates: which models to fit and cross-validate (default: the designer's own, `DESIGNER_MODELS`;
        none for a space-filling designer; [] for none).
    refit_every: refit after this many new measurements (default max(10, 2 x batch size));
    folds: at most this many CV folds (default 5). min_train: fewest distinct points to model (4).
    ensemble: keyword arguments for DeepEnsemble (n_members, hidden, epochs, lr, weight_decay).
    """

    stall_after: int = 10
    min_improvement: float = 0.01
    surrogates: tuple[str, ...] = MODELS
    refit_every: int = 4
    folds: int = 5
    min_train: int = 4
    ensemble: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: Any) -> LearnerOptions:
        batch = int(getattr(spec, "batch_size", 1) or 1)
        section = getattr(spec, "learner", None)
        if section is None:
            raw: dict[str, Any] = {}
        elif isinstance(section, dict):
            raw = dict(section)
        elif hasattr(section, "model_dump"):
            raw = section.model_dump()
        else:
            raw = dict(vars(section))
        raw = {k: v for k, v in raw.items() if v is not None}
        # By default the learner scores the model the designer relies on; a space-filling designer
        # has none, and fitting two for nobody would sit on every sample's path through the lab.
        strategy = getattr(getattr(spec, "designer", None), "strategy", None)
        default = DESIGNER_MODELS.get(strategy, ()) if strategy is not None else MODELS
        surrogates = tuple(raw.get("surrogates", default))
        unknown = [m for m in surrogates if m not in MODELS]
        if unknown:
            raise ValueError(f"learner.surrogates: unknown model {unknown[0]!r} (known: {', '.join(MODELS)})")
        return cls(
            stall_after=int(raw.get("stall_after", max(10, 5 * batch))),
            min_improvement=float(raw.get("min_improvement", 0.01)),
            surrogates=surrogates,
            refit_every=max(1, int(raw.get("refit_every", max(10, 2 * batch)))),
            folds=max(2, int(raw.get("folds", 5))),
            min_train=max(2, int(raw.get("min_train", 4))),
            ensemble=dict(raw.get("ensemble", {}) or {}),
        )


# --- training data ---------------------------------------------------------------------------------


def measured_rows(samples: Sequence[dict[str, Any]], outputs: Sequence[str]) -> list[dict[str, Any]]:
    """Samples with a finite value for every output, in measurement order (seq, then list order)."""
    rows = [s for s in samples if s.get("values") and s.get("state") != "failed" and all(
        isinstance(s["values"].get(k), (int, float)) and math.isfinite(s["values"][k]) for k in outputs)]
    order = {id(s): i for i, s in enumerate(samples)}
    return sorted(rows, key=lambda s: (s.get("seq", 0) or 0, order[id(s)]))


def data_hash(X: np.ndarray, Y: np.ndarray, *extra: Any) -> str:
    digest = hashlib.sha1()
    digest.update(np.ascontiguousarray(np.round(X, 12), dtype=float).tobytes())
    digest.update(np.ascontiguousarray(Y, dtype=float).tobytes())
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:10]


def one_hot(X: np.ndarray, space: DesignSpace) -> np.ndarray:
    """Categorical choice indices as one-hot columns (an MLP should not read an order into them)."""
    cats = space.cat_dims
    if not cats:
        return X
    cols = []
    for j in range(X.shape[1]):
        if j in cats:
            k = len(space.space.parameters[j].choices)
            cols.append(np.eye(k)[np.clip(np.round(X[:, j]).astype(int), 0, k - 1)])
        else:
            cols.append(X[:, j:j + 1])
    return np.concatenate(cols, axis=1)


# --- the surrogates --------------------------------------------------------------------------------


class GPSurrogate:
    """The Bayesian designer's GPs, one per output, on its output warp; predictions in measured units."""

    def __init__(self, strategy: Any, targets: Sequence[bool], seed: int):
        self.strategy, self.targets, self.seed = strategy, list(targets), seed

    def fit(self, X: np.ndarray, Y: np.ndarray) -> GPSurrogate:
        from athanor.planners.bayesian import OutputWarp

        self.parts = []
        Xt = torch.as_tensor(X, dtype=torch.double)
        recipe = self.strategy.early  # the designer's default recipe (it may choose another per campaign)
        for j in range(Y.shape[1]):
            warp = OutputWarp(Y[:, j:j + 1], enabled=recipe.warp_outputs, keep=[0] if self.targets[j] else [])
            Z = warp.forward(Y[:, j:j + 1])
            if not np.isfinite(Z).all():
                warp = OutputWarp(Y[:, j:j + 1], enabled=False)
                Z = (Y[:, j:j + 1] - Y[:, j].mean()) / (Y[:, j].std() or 1.0)
                self.parts.append(("linear", warp, Y[:, j].mean(), Y[:, j].std() or 1.0))
            else:
                self.parts.append(("warp", warp, 0.0, 1.0))
            torch.manual_seed(self.seed + j)
            model = self.strategy._fit(Xt, torch.as_tensor(Z, dtype=torch.double), recipe)
            self.parts[-1] = (*self.parts[-1], model)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Xt = torch.as_tensor(X, dtype=torch.double)
        means, sds = [], []
        for kind, warp, loc, scale, model in self.parts:
            with torch.no_grad():
                posterior = model.posterior(Xt)
                mu = posterior.mean.numpy()
                sigma = posterior.variance.clamp(min=0).sqrt().numpy()
            if kind == "warp":
                mean, sd = warp.to_measured(mu, sigma)
            else:
                mean, sd = loc + mu * scale, sigma * scale
            means.append(mean[:, 0])
            sds.append(sd[:, 0])
        return np.stack(means, axis=1), np.stack(sds, axis=1)


class EnsembleSurrogate:
    def __init__(self, space: DesignSpace, seed: int, options: dict[str, Any]):
        self.space, self.seed, self.options = space, seed, dict(options)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> EnsembleSurrogate:
        from athanor.planners.ensemble import DeepEnsemble

        known = ("n_members", "hidden", "epochs", "lr", "weight_decay", "device")
        kwargs = {k: v for k, v in self.options.items() if k in known}
        if "hidden" in kwargs:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        self.model = DeepEnsemble(seed=self.seed, **kwargs).fit(
            torch.as_tensor(one_hot(X, self.space), dtype=torch.float32), torch.as_tensor(Y, dtype=torch.float32))
        return self

    sd_scale: np.ndarray | float = 1.0  # set from cross-validation on the final model

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mean, sd = self.model.predict(torch.as_tensor(one_hot(X, self.space), dtype=torch.float32))
        return mean.double().cpu().numpy(), sd.double().cpu().numpy() * self.sd_scale


def make_surrogate(name: str, strategy: Any, space: DesignSpace, targets: Sequence[bool], seed: int,
                   options: LearnerOptions) -> GPSurrogate | EnsembleSurrogate:
    if name == "gp":
        return GPSurrogate(strategy, targets, seed)
    return EnsembleSurrogate(space, seed, options.ensemble)


# --- cross-validation ------------------------------------------------------------------------------


def folds(n: int, k: int, seed: int) -> np.ndarray:
    """Fold index per point: a seeded permutation dealt round-robin into k folds."""
    perm = np.random.default_rng([seed, n]).permutation(n)
    fold = np.empty(n, dtype=int)
    fold[perm] = np.arange(n) % k
    return fold


def scores(y: np.ndarray, mean: np.ndarray, sd: np.ndarray, scale: float) -> dict[str, float]:
    """Held-out error, R², coverage and standardized NLL for one output; only finite entries."""
    scale = scale if scale > 0 and math.isfinite(scale) else 1.0
    sd = np.maximum(np.nan_to_num(sd, nan=np.inf), 1e-9 * scale)
    resid = y - mean
    out = {"cv_rmse": float(np.sqrt(np.mean(resid ** 2)))}
    sst = float(np.sum((y - y.mean()) ** 2))
    if sst > 0:
        out["cv_r2"] = 1.0 - float(np.sum(resid ** 2)) / sst
    z = np.abs(resid) / sd
    out["coverage68"] = float(np.mean(z <= 1.0))
    out["coverage95"] = float(np.mean(z <= 1.96))
    out["cv_nll"] = float(np.mean(0.5 * np.log(2 * np.pi * (sd / scale) ** 2) + 0.5 * z ** 2))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _scale(z: np.ndarray) -> np.ndarray:
    """The factor that makes held-out standardized residuals unit-variance: sqrt(mean z²), bounded."""
    with np.errstate(all="ignore"):
        factor = np.sqrt(np.mean(z ** 2, axis=0))
    return np.clip(np.nan_to_num(factor, nan=1.0, posinf=20.0), 0.05, 20.0)


def cross_fitted_scaling(Y: np.ndarray, mean: np.ndarray, sd: np.ndarray, fold: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Variance scaling (Levi et al. 2019) of a model's sd, cross-fitted: each fold's held-out sd is
    scaled by the factor the *other* folds' residuals give, so the reported calibration is not fitted
    to the points it is judged on. Returns the scaled sd and the factor from every fold (what the
    final model's predictions get)."""
    z = (Y - mean) / np.maximum(sd, 1e-12)
    scaled = sd.copy()
    for f in np.unique(fold):
        scaled[fold == f] = sd[fold == f] * _scale(z[fold != f])
    return scaled, _scale(z)


@dataclass
class CVResult:
    metrics: dict[str, float]
    notes: list[str]
    models: dict[str, Any]
    seconds: float


def cross_validate(X: np.ndarray, Y: np.ndarray, outputs: Sequence[str], strategy: Any, space: DesignSpace,
                   targets: Sequence[bool], seed: int, options: LearnerOptions, fit_final: bool = True) -> CVResult:
    """K-fold CV of every surrogate in `options.surrogates`; then (if `fit_final`) each fitted on all data.

    Outputs constant over the data are not modelled (noted). Never raises: a model that fails on
    any fold is dropped from the metrics with a note naming the error.
    """
    start = time.perf_counter()
    n = len(X)
    metrics: dict[str, float] = {}
    notes: list[str] = []
    models: dict[str, Any] = {}
    live = [j for j in range(Y.shape[1]) if np.ptp(Y[:, j]) > 1e-12 * (1 + np.abs(Y[:, j]).max())]
    for j in range(Y.shape[1]):
        if j not in live:
            notes.append(f"{outputs[j]} constant so far: not modelled")
    if not live:
        return CVResult(metrics, notes, models, time.perf_counter() - start)
    Yl = Y[:, live]
    tl = [targets[j] for j in live]
    k = min(options.folds, n)
    fold = folds(n, k, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small gain nothing from threads, and lose much when cores are busy
    try:
        _cross_validate(X, Yl, fold, k, [outputs[j] for j in live], strategy, space, tl, seed, options,
                        fit_final, metrics, notes, models)
    finally:
        torch.set_num_threads(threads)
    return CVResult(metrics, notes, models, time.perf_counter() - start)


def _cross_validate(X: np.ndarray, Yl: np.ndarray, fold: np.ndarray, k: int, outputs: list[str], strategy: Any,
                    space: DesignSpace, tl: list[bool], seed: int, options: LearnerOptions, fit_final: bool,
                    metrics: dict[str, float], notes: list[str], models: dict[str, Any]) -> None:
    for name in options.surrogates:
        try:
            mean, sd = np.empty_like(Yl), np.empty_like(Yl)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for f in range(k):
                    train, test = fold != f, fold == f
                    model = make_surrogate(name, strategy, space, tl, seed + f, options).fit(X[train], Yl[train])
                    mean[test], sd[test] = model.predict(X[test])
                if fit_final:
                    models[name] = make_surrogate(name, strategy, space, tl, seed, options).fit(X, Yl)
        except Exception as exc:  # noqa: BLE001 -- numerics of one model must not sink the update
            notes.append(f"{name} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
            models.pop(name, None)
            continue
        if name in RECALIBRATED:
            sd, factors = cross_fitted_scaling(Yl, mean, sd, fold)
            if name in models:
                models[name].sd_scale = factors
            metrics.update({f"sd_scale:{name}:{output}": float(factors[i]) for i, output in enumerate(outputs)})
        for i, output in enumerate(outputs):
            for key, value in scores(Yl[:, i], mean[:, i], sd[:, i], float(Yl[:, i].std())).items():
                metrics[f"{key}:{name}:{output}"] = value


# --- stopping --------------------------------------------------------------------------------------


def stall(samples: Sequence[dict[str, Any]], objective: Objective, constraints: Sequence[OutcomeConstraint],
          stall_after: int, min_improvement: float) -> tuple[bool, str]:
    """Whether the best feasible value of `objective` improved by at most a relative `min_improvement`
    over the last `stall_after` measured samples (judged once 2 × stall_after are measured).

    Relative to the magnitude of the earlier best (for a target objective: its distance from the
    target); where that is zero, to the spread of the measured values."""
    if stall_after <= 0:
        return False, ""
    measured = measured_rows(samples, [objective.name])
    if len(measured) < 2 * stall_after:
        return False, ""
    before, recent = measured[:-stall_after], measured
    ok = [s for s in before if feasible(s["values"], constraints)]
    ok_now = [s for s in recent if feasible(s["values"], constraints)]
    if not ok_now:
        return False, ""
    u_now = max(utility(s["values"][objective.name], objective) for s in ok_now)
    if not ok:
        return False, ""
    u_before = max(utility(s["values"][objective.name], objective) for s in ok)
    scale = abs(u_before)
    if scale <= 0:
        scale = float(np.ptp([s["values"][objective.name] for s in measured]))
    gain = u_now - u_before
    if gain > min_improvement * scale or (scale <= 0 and gain > 0):
        return False, ""
    what = "distance to target of" if objective.direction == "target" else "best"
    return True, (f"improvement stalled: {what} {objective.name} improved by {gain:.3g} "
                  f"(at most {min_improvement:.0%} relative) over the last {stall_after} measurements")
