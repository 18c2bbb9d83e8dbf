"""Designers under one small interface, so athanor's strategies, BayBE and Ax meet the same pool.

A designer is told which pool rows have been measured (and their values) and answers with the next
row to measure. Each keeps its own state between calls (a BayBE campaign, an Ax client), so the
harness only hands it the full measured list and the adapter passes on what is new. BayBE and Ax are
imported only when asked for: they are heavy, optional, and noisy on import.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import numpy as np
import pandas as pd
import yaml

from athanor import registry
from athanor.errors import AthanorError
from athanor.planners.base import Observation
from athanor.planners.space import DesignSpace
from athanor.simulators.replay import load_pool
from athanor.spec import Objective, PoolSpace, Space

INSTALL_HINT = "pip install -e .[bench]"
ATHANOR_DEFAULT = "bayesian"  # the strategy the bare designer name "athanor" stands for
EXTERNAL = ("baybe", "ax", "botorch")


class BenchError(AthanorError):
    """A benchmark that cannot run as asked; the CLI prints it as one line."""


@dataclass(frozen=True)
class Pool:
    """A tabulated dataset after the protocol's averaging: row i is experiment i."""

    dataset: Path
    inputs: list[str]
    objective: str
    direction: Literal["min", "max"]
    frame: pd.DataFrame  # inputs + objective, duplicates averaged, rows without a value dropped
    n_dropped: int

    @cached_property  # frozen dataclasses allow it: it writes the instance dict directly
    def X(self) -> np.ndarray:
        return self.frame[self.inputs].to_numpy(dtype=float)

    @cached_property
    def y(self) -> np.ndarray:
        return self.frame[self.objective].to_numpy(dtype=float)

    @cached_property
    def varying(self) -> list[str]:
        """Inputs with more than one value: BayBE and Ax both reject a parameter with one value."""
        return [c for c in self.inputs if self.frame[c].nunique() > 1]

    def __len__(self) -> int:
        return len(self.frame)

    def unit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows scaled to [0, 1] per column, with the scale, so suggestions snap in the same units."""
        X = self.X
        lo, hi = X.min(axis=0), X.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)  # a constant column maps to 0 and never decides
        return (X - lo) / span, lo, span


def load_problem(dataset: str | Path, inputs: list[str], objective: str, direction: str) -> Pool:
    """The pool as every designer sees it; rows whose objective is missing cannot be measured."""
    direction = {"min": "min", "minimize": "min", "max": "max", "maximize": "max"}.get(direction, "")
    if not direction:
        raise BenchError("direction must be min or max")
    if objective in inputs:
        raise BenchError(f"the objective {objective!r} is also listed as an input")
    frame = load_pool(dataset, list(inputs), [objective])
    text = [c for c in [*inputs, objective] if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise BenchError(f"columns must be numeric (categorical pools are not supported): {text}")
    keep = frame[objective].notna() & frame[inputs].notna().all(axis=1)
    return Pool(Path(dataset).resolve(), list(inputs), objective, direction,  # type: ignore[arg-type]
                frame[keep].reset_index(drop=True), int((~keep).sum()))


class Designer(Protocol):
    """Answers with the next pool rows to measure, given every row measured so far (in order) and
    the rows still being measured (`pending`, whose values are not known yet)."""

    def next_rows(self, measured: list[int], values: list[float], pending: list[int], q: int) -> list[int]: ...


def nearest_free(unit_rows: np.ndarray, point: np.ndarray, measured: list[int]) -> int:
    """The unmeasured row closest to `point` (ties: the lowest index, for reproducibility)."""
    free = np.setdiff1d(np.arange(len(unit_rows)), np.asarray(measured, dtype=int))
    if free.size == 0:
        raise BenchError("the pool is exhausted")
    distances = np.linalg.norm(unit_rows[free] - point, axis=1)
    return int(free[int(np.argmin(distances))])


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence library warnings (botorch/gpytorch numerics, deprecations) during one call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- athanor's own strategies ---------------------------------------------------------------------


class StrategyDesigner:
    """Any registered athanor strategy, fed the same `Observation` history the designer agent builds."""

    def __init__(self, strategy: str, pool: Pool, seed: int, options: dict[str, Any] | None = None):
        cls = registry.load("athanor.strategies", strategy)
        space = Space(pool=PoolSpace(dataset=pool.dataset, inputs=pool.inputs))
        objective = Objective(name=pool.objective, direction="minimize" if pool.direction == "min" else "maximize")
        self.pool = pool
        self.strategy = cls(DesignSpace(space, pool.X), objectives=[objective], seed=seed, **(options or {}))
        self._X = pool.X

    def _inputs(self, row: int) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.pool.inputs, self._X[row])}

    def next_rows(self, measured: list[int], values: list[float], pending: list[int], q: int) -> list[int]:
        history = [Observation(inputs=self._inputs(i), values={self.pool.objective: float(y)}, pool_index=int(i))
                   for i, y in zip(measured, values)]
        in_flight = [Observation(inputs=self._inputs(i), pool_index=int(i)) for i in pending]
        with quiet():  # the same treatment as the libraries: numerical warnings do not reach the log
            candidates = self.strategy.propose(history, q, in_flight)
        self.model = getattr(self.strategy, "model_version", None)
        if len(candidates) != q or any(c.pool_index is None for c in candidates):
            raise BenchError(f"strategy {self.strategy.name!r} did not name {q} pool row(s)")
        return [int(c.pool_index) for c in candidates]


# --- BayBE -----------------------------------------------------------------------------------------


class BayBEDesigner:
    """BayBE's default recommender over the pool as a discrete search space.

    BayBE 0.15 lets a campaign re-recommend measured points unless told not to
    (`allow_recommending_already_measured` is AUTO = True); a pool experiment cannot be repeated, so
    it is switched off. The seed goes through `active_settings.random_seed` (`set_random_seed` is
    deprecated in 0.15 and only warns on top of doing the same).
    """

    def __init__(self, pool: Pool, seed: int):
        baybe = _import_baybe()
        from baybe.searchspace import SubspaceDiscrete
        from baybe.targets import NumericalTarget

        baybe.active_settings.random_seed = int(seed)
        self.pool = pool
        with quiet():
            space = SubspaceDiscrete.from_dataframe(pool.frame[pool.varying])
            target = NumericalTarget(pool.objective, minimize=pool.direction == "min")
            self.campaign = baybe.Campaign(space, target, allow_recommending_already_measured=False)
        self._told = 0

    def next_rows(self, measured: list[int], values: list[float], pending: list[int], q: int) -> list[int]:
        new = measured[self._told:]
        with quiet():
            if new:
                self.campaign.add_measurements(self.pool.frame.iloc[new][[*self.pool.varying, self.pool.objective]])
                self._told = len(measured)
            in_flight = self.pool.frame.iloc[pending][self.pool.varying] if pending else None
            recommended = self.campaign.recommend(batch_size=q, pending_experiments=in_flight)
        # The discrete subspace keeps the frame's RangeIndex, so the label is the pool row.
        rows = [int(i) for i in recommended.index]
        if not np.allclose(self.pool.frame.loc[rows, self.pool.varying].to_numpy(dtype=float),
                           recommended[self.pool.varying].to_numpy(dtype=float)):
            raise BenchError("BayBE's recommendation does not match its index in the pool")
        return rows


# --- Ax --------------------------------------------------------------------------------------------


class AxDesigner:
    """Ax's default generation strategy (Sobol, then BoTorch) over the pool's bounding box.

    Ax proposes a continuous point; the nearest unmeasured pool row (min-max normalised inputs) is
    measured instead, so the generated trial is abandoned and the snapped row attached and completed
    at its own parameters. Ax counts attached trials towards its Sobol initialisation and keeps
    abandoned arms as pending points, so it does not propose the same spot again. Parameter and
    metric names are replaced by x0.. and y: Ax parses the objective as an expression, which column
    names with spaces or parentheses break.
    """

    def __init__(self, pool: Pool, seed: int):
        Client, RangeParameterConfig = _import_ax()
        self.pool = pool
        self._unit, self._lo, self._span = pool.unit()
        X = pool.X
        self._cols = [pool.inputs.index(c) for c in pool.varying]
        self.client = Client(random_seed=int(seed))
        with quiet():
            self.client.configure_experiment(parameters=[
                RangeParameterConfig(name=f"x{j}", bounds=(float(X[:, j].min()), float(X[:, j].max())),
                                     parameter_type="float") for j in self._cols])
            self.client.configure_optimization(objective="-y" if pool.direction == "min" else "y")
        self._told = 0
        self._open: tuple[int, int] | None = None  # (Ax trial, pool row) when Ax proposed a pool row exactly

    def _params(self, row: int) -> dict[str, float]:
        return {f"x{j}": float(self.pool.X[row, j]) for j in self._cols}

    def next_rows(self, measured: list[int], values: list[float], pending: list[int], q: int) -> list[int]:
        if q != 1 or pending:
            raise BenchError("the Ax adapter proposes one row at a time")
        with quiet():
            for row, value in zip(measured[self._told:], values[self._told:]):
                if self._open is not None and self._open[1] == row:
                    trial = self._open[0]
                else:
                    trial = self.client.attach_trial(self._params(row))
                self.client.complete_trial(trial, raw_data={"y": float(value)})
            self._told, self._open = len(measured), None
            trials = self.client.get_next_trials(max_trials=1)
            if len(trials) != 1:
                raise BenchError(f"Ax returned {len(trials)} trials instead of 1")
            (trial, params), = trials.items()
            point = np.zeros(self.pool.X.shape[1])
            for j in self._cols:
                point[j] = (float(params[f"x{j}"]) - self._lo[j]) / self._span[j]
            row = nearest_free(self._unit, point, measured)
            if np.allclose(self._unit[row], point, rtol=0.0, atol=1e-12):
                self._open = (trial, row)  # Ax asked for exactly this row: complete its own trial later
            else:
                self.client.mark_trial_abandoned(trial)
        return [row]


# --- plain BoTorch ---------------------------------------------------------------------------------


class BoTorchDesigner:
    """The textbook baseline: BoTorch's SingleTaskGP with its own defaults on the pool's rows scaled
    to [0, 1], analytic LogEI against the best measured value, every free row scored exactly."""

    def __init__(self, pool: Pool, seed: int):
        import torch

        self.pool, self.seed = pool, seed
        self._unit = torch.as_tensor(pool.unit()[0], dtype=torch.double)
        self._sign = -1.0 if pool.direction == "min" else 1.0

    def next_rows(self, measured: list[int], values: list[float], pending: list[int], q: int) -> list[int]:
        import torch
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from gpytorch.mlls import ExactMarginalLogLikelihood

        if q != 1 or pending:
            raise BenchError("the plain BoTorch baseline proposes one row at a time")
        torch.manual_seed(self.seed + len(measured))
        X = self._unit[measured]
        Y = self._sign * torch.as_tensor(values, dtype=torch.double).unsqueeze(-1)
        with quiet():
            model = SingleTaskGP(X, Y)  # BoTorch's defaults: RBF with its LogNormal prior, Standardize
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
            free = torch.as_tensor(np.setdiff1d(np.arange(len(self.pool)), measured))
            with torch.no_grad():
                scores = LogExpectedImprovement(model, best_f=Y.max()).forward(self._unit[free].unsqueeze(-2))
        return [int(free[int(torch.argmax(scores))])]


# --- loading the optional libraries ----------------------------------------------------------------


def _import_baybe() -> Any:
    try:
        with quiet():
            import baybe
    except ImportError as exc:
        raise BenchError(f"designer 'baybe' needs BayBE, which is not installed ({exc}); "
                         f"install the benchmark extras: {INSTALL_HINT}") from None
    return baybe


def _import_ax() -> tuple[Any, Any]:
    try:
        logging.disable(logging.INFO)  # Ax logs at INFO while it imports, before it can be configured
        with quiet():
            from ax.api.client import Client
            from ax.api.configs import RangeParameterConfig
    except ImportError as exc:
        raise BenchError(f"designer 'ax' needs Ax (ax-platform), which is not installed ({exc}); "
                         f"install the benchmark extras: {INSTALL_HINT}") from None
    finally:
        logging.disable(logging.NOTSET)
    for handler in logging.getLogger("ax").handlers:  # Ax sets its loggers to INFO; filter at the handler
        handler.setLevel(logging.WARNING)
    return Client, RangeParameterConfig


# --- from a designer's name to a designer ------------------------------------------------------------


@dataclass(frozen=True)
class DesignerSpec:
    """What a name on the command line means: the exact random curve, a strategy, or a library;
    `batch` rows per proposal with `in_flight` batches being measured at once (1: synchronous)."""

    name: str
    kind: Literal["random", "strategy", "baybe", "ax", "botorch"]
    strategy: str | None = None
    batch: int = 1
    in_flight: int = 1
    options: tuple[tuple[str, Any], ...] = ()  # a strategy's options, from NAME[key=value;...]


def _options(name: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """`athanor[warp_outputs=false;surrogate=rbf]`: the strategy's options, values read as YAML."""
    base, bracket, rest = name.partition("[")
    if not bracket:
        return name, ()
    if not rest.endswith("]"):
        raise BenchError(f"designer {name!r}: options go in one [key=value;...] at the end of the name")
    pairs = []
    for item in filter(None, rest[:-1].split(";")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise BenchError(f"designer {name!r}: {item!r} is not key=value")
        pairs.append((key.strip(), yaml.safe_load(value)))
    return base, tuple(pairs)


def _batch_suffix(name: str) -> tuple[str, int, int]:
    """`NAME@qB` proposes B rows at a time, synchronously; `NAME@qBxF` keeps F batches in flight,
    each proposed with the rows still being measured as pending points."""
    base, _, suffix = name.partition("@")
    if not suffix:
        return name, 1, 1
    match = re.fullmatch(r"q(\d+)(?:x(\d+))?", suffix)
    if not match or int(match[1]) < 1 or int(match[2] or 1) < 1:
        raise BenchError(f"designer {name!r}: the batch suffix is @qB or @qBxF (B rows, F batches in flight)")
    return base, int(match[1]), int(match[2] or 1)


def resolve(name: str) -> DesignerSpec:
    """`random` is the exact curve; `athanor` is the bayesian strategy; `athanor:X` or a bare
    registered name X is that strategy (so `athanor:random` is random sampling, simulated);
    `botorch` is a plain BoTorch GP with LogEI. Any designer but random and the one-at-a-time
    baselines (ax, botorch) takes a batch suffix: `athanor@q4x2`, `baybe@q4`."""
    known = registry.available("athanor.strategies")
    base, batch, in_flight = _batch_suffix(name)
    base, options = _options(base)
    if options and base in ("random", *EXTERNAL):
        raise BenchError(f"designer {base!r} takes no options: they are for athanor's strategies")
    if base in ("random", "ax", "botorch") and (batch, in_flight) != (1, 1):
        raise BenchError(f"designer {base!r} proposes one row at a time: no batch suffix")
    if base == "random":
        return DesignerSpec(name, "random")
    if base in EXTERNAL:
        return DesignerSpec(name, base, batch=batch, in_flight=in_flight)  # type: ignore[arg-type]
    strategy = ATHANOR_DEFAULT if base == "athanor" else base.removeprefix("athanor:")
    if strategy not in known:
        why = " (the bare name 'athanor' means that strategy)" if name == "athanor" else ""
        raise BenchError(f"unknown designer {name!r}: no strategy {strategy!r}{why}; "
                         f"use random, baybe, ax, botorch, athanor[:STRATEGY] or one of: {', '.join(sorted(known))}")
    return DesignerSpec(name, "strategy", strategy, batch, in_flight, options)


def check_available(spec: DesignerSpec) -> None:
    """Fail before any campaign runs, not after an hour of the others."""
    if spec.kind == "baybe":
        _import_baybe()
    elif spec.kind == "ax":
        _import_ax()


def make_designer(spec: DesignerSpec, pool: Pool, seed: int) -> Designer:
    if spec.kind == "strategy":
        return StrategyDesigner(spec.strategy or ATHANOR_DEFAULT, pool, seed, dict(spec.options))
    if spec.kind == "baybe":
        return BayBEDesigner(pool, seed)
    if spec.kind == "ax":
        return AxDesigner(pool, seed)
    if spec.kind == "botorch":
        return BoTorchDesigner(pool, seed)
    raise BenchError("the random designer has an exact curve and proposes nothing")
