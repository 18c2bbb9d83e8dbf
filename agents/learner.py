"""The learner: fits the campaign's surrogates, reports how good they are, and says when to stop.

After a measurement, the learner

* tracks the best feasible sample so far (metrics `n_measured`, `best:<objective>`);
* refits its surrogates (agents/surrogates.py: the Bayesian designer's GPs and a deep ensemble)
  when `refit_every` new measurements came in since the
  last fit (default: max(10, 2 x batch size)), or when the budget's last sample is in; otherwise it reports
  the last fit's metrics under the same `model_version`. Refits score both models by K-fold
  cross-validation (`cv_rmse`, `cv_r2`, `coverage68`, `coverage95`, `cv_nll` per model and output);
* recommends stopping when one sample meets every target (all objectives being targets), or when
  the first objective's best feasible value has stalled (`surrogates.stall`).

It never raises: a failed model becomes a note in `reason`, and anything else a summary-only update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from athanor.agents.common import Agent, History
from athanor.agents.surrogates import (
    SHORT,
    LearnerOptions,
    cross_validate,
    data_hash,
    measured_rows,
    stall,
)
from athanor.messages import ModelUpdate, to_wire
from athanor.objectives import best_sample, feasible, meets_target
from athanor.planners.base import Observation


@dataclass
class _Fit:
    version: str
    n_train: int
    n_measured: int
    metrics: dict[str, float]
    notes: list[str]
    models: dict[str, Any]


class LearnerAgent(Agent):
    role = "learner"

    def __init__(self, spec: dict[str, Any], campaign_id: str):
        super().__init__(spec, campaign_id)
        self.options = LearnerOptions.from_spec(self.spec)
        self.last_fit: _Fit | None = None
        self._strategy: Any = None
        self._space: Any = None
        self.history = History()  # measured samples, sent once each (athanor/feeds.py)
        self._best: dict[str, Any] | None = None
        if self.options.surrogates:
            try:  # import the modelling stack and load a pool now, while the campaign starts
                self.strategy()
                import athanor.planners.ensemble  # noqa: F401
            except Exception:  # noqa: BLE001 -- reported by the first update that needs it
                self._strategy = None

    # --- the agent's one call -------------------------------------------------------------------
    def update(self, sample_id: str, causation_id: str | None, feed: dict[str, Any],
               final: bool = False) -> dict[str, Any]:
        """After sample `sample_id` is measured: `feed` brings the measurements the learner has not seen
        (athanor/feeds.py); `final` says the budget's last sample is in (a last refit is due)."""
        taken = self.history.take(feed)
        if taken is None:
            return History.RESYNC
        added, replaced = taken
        if replaced:
            self._best = None
        spec = self.spec
        samples = self.history.records
        new = [s for s in added if s.get("values") and s.get("state") != "failed"]
        best = self._best = best_sample([*([self._best] if self._best else []), *new], spec.objectives,
                                        spec.outcome_constraints)
        measured = samples
        metrics: dict[str, float] = {"n_measured": float(len(measured))}
        if best is not None:
            metrics.update({f"best:{o.name}": float(best["values"][o.name]) for o in spec.objectives
                            if isinstance(best["values"].get(o.name), (int, float))})
        targets = [o for o in spec.objectives if o.direction == "target"]
        hit = [s for s in new if targets and len(targets) == len(spec.objectives)
               and all(meets_target(s["values"], o) for o in targets)
               and feasible(s["values"], spec.outcome_constraints)]
        reasons = [f"sample {hit[0]['id']} meets every target"] if hit else []
        stalled = False
        try:
            stalled, why = stall(measured, spec.objectives[0], spec.outcome_constraints,
                                 self.options.stall_after, self.options.min_improvement)
            if stalled and not hit:
                reasons.append(why)
        except Exception as exc:  # noqa: BLE001
            reasons.append(f"stall check failed ({type(exc).__name__})")
        version, n_train, notes = f"summary-{len(measured)}", len(measured), []
        try:
            fit = self._model(sample_id, samples, final)
            if fit is not None:
                version, n_train, notes = fit.version, fit.n_train, fit.notes
                metrics.update(fit.metrics)
        except Exception as exc:  # noqa: BLE001 -- the measurement stands without a model
            notes = [f"modelling failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"]
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        return to_wire(ModelUpdate(
            campaign_id=self.campaign_id, sample_id=sample_id, causation_id=causation_id, sender=self.role,
            model_version=version, n_train=n_train, metrics=metrics,
            best={"sample_id": best["id"], "values": best["values"]} if best else {},
            recommend_stop=bool(hit) or stalled,
            reason="; ".join(reasons + notes),
        ))

    # --- modelling ------------------------------------------------------------------------------
    @property
    def outputs(self) -> list[str]:
        return self.spec.output_names

    def strategy(self) -> Any:
        """A BayesianStrategy on the campaign's space: its `_fit` builds the GPs the designer uses."""
        if self._strategy is None:
            from athanor.planners.bayesian import BayesianStrategy
            from athanor.planners.space import DesignSpace

            pool_spec, pool = self.spec.space.pool, None
            if pool_spec is not None:
                from athanor.pool import load_pool

                pool = load_pool(pool_spec.dataset, pool_spec.inputs, []).to_numpy(dtype=float)
            self._space = DesignSpace(self.spec.space, pool)
            options = dict(self.spec.designer.options) if self.spec.designer.strategy == "bayesian" else {}
            kwargs = dict(objectives=self.spec.objectives, constraints=self.spec.outcome_constraints,
                          seed=self.spec.seed)
            try:
                self._strategy = BayesianStrategy(self._space, **kwargs, **options)
            except (TypeError, ValueError):  # options meant for another designer: the GP's defaults
                self._strategy = BayesianStrategy(self._space, **kwargs)
        return self._strategy

    def _due(self, n_measured: int, final: bool) -> bool:
        """Refit every `refit_every` new measurements, and once more when the budget is used up.

        Fitting costs about a second or two on 2 cores and sits on the sample's path through the lab,
        so it is not done after every batch."""
        last = self.last_fit
        if last is None:
            return True
        new = n_measured - last.n_measured
        return new >= self.options.refit_every or (new > 0 and final)

    def _model(self, sample_id: str, samples: list[dict[str, Any]], final: bool = False) -> _Fit | None:
        if not self.options.surrogates:
            return None
        rows = measured_rows(samples, self.outputs)
        if len(rows) < self.options.min_train:
            return None
        strategy = self.strategy()
        X, Y = strategy._training_data([Observation(inputs=s["inputs"], values=s["values"]) for s in rows])
        X, Y = X.numpy(), Y.numpy()
        label = "+".join(SHORT[m] for m in self.options.surrogates)
        version = f"{label}-{len(X)}-{data_hash(X, Y, self.options.surrogates, self.spec.seed)}"
        if self.last_fit is not None and (self.last_fit.version == version  # the same data: the same model
                                          or not self._due(len(rows), final)):
            return self.last_fit
        if len(X) < self.options.min_train:
            return _Fit(f"summary-{len(rows)}", len(X), len(rows), {"n_train": float(len(X))},
                        [f"{len(X)} distinct points: too few to model"], {})
        targets = [j < len(self.spec.objectives) and self.spec.objectives[j].direction == "target"
                   for j in range(len(self.outputs))]
        cv = cross_validate(X, Y, self.outputs, strategy, self._space, targets, self.spec.seed, self.options)
        metrics = {"n_train": float(len(X)), "cv_folds": float(min(self.options.folds, len(X))), **cv.metrics}
        self.last_fit = _Fit(version, len(X), len(rows), metrics, cv.notes, cv.models)
        return self.last_fit

    # --- the fitted surrogates, for callers in the same process ---------------------------------
    def predict(self, inputs: list[dict[str, Any]], model: str = "ensemble") -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd [n, outputs modelled] of the last fitted `model` at `inputs`."""
        if self.last_fit is None or model not in self.last_fit.models:
            raise LookupError(f"no fitted {model} surrogate yet")
        X = np.array([self._space.to_features(x) for x in inputs])
        return self.last_fit.models[model].predict(X)
