"""The campaign file: what may be made, what is wanted, the budget, and who does the work.

A YAML file validated by pydantic (unknown keys rejected). `load_campaign` reports every problem
with its field path and the line it sits on, as one `SpecError`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from athanor.errors import AthanorError, SpecError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContinuousParameter(_Strict):
    type: Literal["continuous"]
    name: str
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> ContinuousParameter:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"bounds cannot be met: low ({self.low}) must be below high ({self.high})")
        return self


class IntegerParameter(_Strict):
    type: Literal["integer"]
    name: str
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> IntegerParameter:
        if self.low > self.high:
            raise ValueError(f"bounds cannot be met: low ({self.low}) is above high ({self.high})")
        return self


class CategoricalParameter(_Strict):
    type: Literal["categorical"]
    name: str
    choices: list[str] = Field(min_length=2)

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[str]) -> list[str]:
        if len(set(choices)) != len(choices):
            raise ValueError("choices must be distinct")
        return choices


Parameter = Annotated[
    Union[ContinuousParameter, IntegerParameter, CategoricalParameter], Field(discriminator="type")
]


class CompositionSpace(_Strict):
    """Fractions of named elements that sum to 1, each within its own bounds."""

    elements: dict[str, tuple[float, float]] = Field(min_length=2)

    @field_validator("elements")
    @classmethod
    def _elements(cls, elements: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        from pymatgen.core.periodic_table import Element

        unknown = [s for s in elements if not Element.is_valid_symbol(s)]
        if unknown:
            raise ValueError(f"unknown element {', '.join(map(repr, unknown))}")
        for symbol, (low, high) in elements.items():
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"bounds of {symbol} must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        lows = sum(lo for lo, _ in elements.values())
        highs = sum(hi for _, hi in elements.values())
        if lows > 1.0 + 1e-12 or highs < 1.0 - 1e-12:
            raise ValueError(
                f"bounds cannot be met: fractions must sum to 1 but the lower bounds sum to {lows:g} "
                f"and the upper bounds to {highs:g}"
            )
        return elements


class PoolSpace(_Strict):
    """The rows of a tabulated dataset: every row is a possible experiment."""

    dataset: Path
    inputs: list[str] = Field(min_length=1)

    @field_validator("dataset")
    @classmethod
    def _resolve(cls, path: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        resolved = path if path.is_absolute() or base is None else (Path(base) / path)
        resolved = resolved.resolve()
        if not resolved.is_file():
            raise ValueError(f"dataset file not found: {resolved}")
        return resolved


class Space(_Strict):
    parameters: list[Parameter] = []
    composition: CompositionSpace | None = None
    pool: PoolSpace | None = None

    @model_validator(mode="after")
    def _shape(self) -> Space:
        if self.pool is not None and (self.parameters or self.composition is not None):
            raise ValueError("a pool space cannot be combined with parameters or a composition")
        if self.pool is None and not self.parameters and self.composition is None:
            raise ValueError("the space is empty: give parameters, a composition or a pool")
        names = self.input_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"input names must be unique, repeated: {duplicates}")
        return self

    @property
    def input_names(self) -> list[str]:
        if self.pool is not None:
            return list(self.pool.inputs)
        names = [p.name for p in self.parameters]
        if self.composition is not None:
            names += list(self.composition.elements)
        return names


class Objective(_Strict):
    name: str
    direction: Literal["maximize", "minimize", "target"]
    target: float | None = None
    tolerance: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _target(self) -> Objective:
        if self.direction == "target" and (self.target is None or self.tolerance is None):
            raise ValueError("a target objective needs both 'target' and 'tolerance'")
        if self.direction != "target" and self.target is not None:
            raise ValueError(f"'target' only applies to direction 'target', not {self.direction!r}")
        return self


class OutcomeConstraint(_Strict):
    name: str
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> OutcomeConstraint:
        if self.lower is None and self.upper is None:
            raise ValueError("give a lower bound, an upper bound or both")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"bounds cannot be met: lower ({self.lower}) is above upper ({self.upper})")
        return self


class Budget(_Strict):
    experiments: int = Field(ge=1)
    wall_time_s: float | None = Field(default=None, gt=0)


class DesignerSpec(_Strict):
    strategy: str = "sobol"
    options: dict[str, Any] = {}


class LearnerSpec(_Strict):
    stall_after: int | None = Field(default=None, ge=0, description="measurements without improvement before "
                                    "stopping (default max(10, 5 x batch size); 0: never)")
    min_improvement: float = Field(default=0.01, ge=0, description="relative improvement that counts")
    surrogates: list[Literal["gp", "ensemble"]] | None = Field(
        default=None, description="models to fit and cross-validate (default: the designer's own)")
    refit_every: int | None = Field(default=None, ge=1, description="new measurements between refits (default: max(10, 2 x batch size))")
    folds: int = Field(default=5, ge=2, description="cross-validation folds")
    min_train: int = Field(default=4, ge=2, description="distinct points before models are fitted")
    ensemble: dict[str, Any] = {}


class PlannerSpec(_Strict):
    route: str = "direct"
    options: dict[str, Any] = {}


class WorldSpec(_Strict):
    kind: str = "replay"
    noise: float = Field(default=0.0, ge=0, description="relative sd of multiplicative noise")
    latency_s: float = Field(default=0.0, ge=0, description="instrument time per step")
    failure_rate: float = Field(default=0.0, ge=0, lt=1, description="probability a step fails")
    drift: float = Field(default=0.0, description="relative calibration drift per sample")
    time_scale: float = Field(default=0.0, ge=0, description="seconds slept per second of modelled step time")
    options: dict[str, Any] = {}


class InstrumentSpec(_Strict):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    role: Literal["synthesis", "characterization"]
    kind: str | None = Field(default=None, description="the station (entry point 'athanor.instruments'); "
                             "unset: what suits the world (powder_furnace or synthesizer; xrd or probe)")
    backend: Literal["simulated", "epics"] = Field(default="simulated", description="simulated: the world in "
                                                   "process; epics: ophyd EpicsSignals over Channel Access")
    prefix: str = Field(default="athanor:", max_length=60, pattern=r"^[A-Za-z0-9_:\-]*$",
                        description="PV names are {prefix}{name}:{device}:{channel}")
    timeout_s: float = Field(default=300.0, gt=0, description="how long one action (a firing, a scan) may take "
                             "before it is a fault of the step")
    retries: int = Field(default=3, ge=0, description="tries again to reach an instrument that does not answer, "
                         "waiting backoff_s, then twice that, ..., before the step is given up on this instrument")
    backoff_s: float = Field(default=1.0, ge=0)
    quarantine_after: int = Field(default=3, ge=1, description="steps lost in a row (unreachable, or the control "
                                  "system lost the instrument mid-step) before it is taken out of service")
    on_interrupted: Literal["retry", "fail", "ask"] | None = Field(
        default=None, description="a step this instrument began and never finished (the driver died mid-run, "
        "or the control system lost the instrument): run it again as a new run, fail the sample, or ask an "
        "operator (default: retry for characterization, ask for synthesis)")

    limits: dict[str, tuple[float | None, float | None]] = Field(
        default={}, description="'device.channel': [low, high] a numeric setpoint must stay within (null: the "
        "hardware's own on that side), narrowing the hardware's limits: every plan is checked against them "
        "before it moves anything")

    @field_validator("limits")
    @classmethod
    def _limits(cls, limits: dict[str, tuple[float | None, float | None]]) -> dict[str, tuple[float | None, float | None]]:
        for where, (low, high) in limits.items():
            device, dot, channel = where.partition(".")
            if not (device and dot and channel) or "." in channel:
                raise ValueError(f"limits key {where!r}: expected 'device.channel', e.g. 'furnace.program_temperatures'")
            if any(v is not None and not math.isfinite(v) for v in (low, high)):
                raise ValueError(f"limits of {where}: [{low}, {high}] must be finite numbers or null")
            if low is not None and high is not None and low > high:
                raise ValueError(f"limits of {where}: the lower limit {low:g} is above the upper limit {high:g}")
        return limits

    def allowed(self, device: str) -> dict[str, tuple[float | None, float | None]]:
        """This instrument's limits for one of its devices: channel -> (low, high)."""
        return {k.partition(".")[2]: v for k, v in self.limits.items() if k.partition(".")[0] == device}

    @property
    def interrupted_policy(self) -> str:
        return self.on_interrupted or ("retry" if self.role == "characterization" else "ask")


# Hazard flags a precursor (or reagent) can carry: what a lab's approval rules speak of.
Hazard = Literal["oxidizer", "toxic", "corrosive", "hygroscopic", "flammable", "pyrophoric", "carcinogen", "irritant"]


class ApprovalRules(_Strict):
    """When the `rules` policy approves by itself; a proposal that fails any rule waits for an operator."""

    min_measured: int = Field(default=3, ge=0, description="ask until this many samples are measured")
    inside_explored: bool = Field(default=True, description="every input within what has been measured")
    margin: float = Field(default=0.0, ge=0, description="slack beyond the measured range, as a fraction of it")
    max_relative_sd: float | None = Field(default=None, gt=0, description="predicted sd / |mean| of the first "
                                          "objective at most this (needs a model's prediction)")
    max_cost_usd: float | None = Field(default=None, gt=0, description="the recipe's precursor cost at most this "
                                       "(needs a route that prices its recipes, e.g. solid_state)")
    allowed_hazards: list[Hazard] | None = Field(default=None, description="hazard flags a recipe's precursors may "
                                                 "carry; [] approves only unflagged recipes; unset: not checked")


class ApprovalSpec(_Strict):
    policy: Literal["auto", "always", "rules"] = "auto"
    rules: ApprovalRules = ApprovalRules()
    timeout_s: float | None = Field(default=None, gt=0, description="how long a proposal waits for an operator")
    default: Literal["approve", "reject"] = Field(default="reject", description="what happens when it times out")
    max_waiting: int | None = Field(default=None, ge=1, description="the designer is asked for more only while "
                                    "fewer proposals than this are undecided (default: the batch size × "
                                    "parallel_batches; a batch can take the count past it); approved work runs "
                                    "meanwhile")
    operator: str | None = Field(default=None, description="who decides when neither --user nor ATHANOR_USER says")
    chat_model: str | None = Field(default=None, description="'provider:model' for the chat through LangChain's "
                                   "init_chat_model (ATHANOR_CHAT_MODEL overrides); unset: the built-in model")


def default_instruments() -> list[InstrumentSpec]:
    return [
        InstrumentSpec(name="synthesizer", role="synthesis"),
        InstrumentSpec(name="probe", role="characterization"),
    ]


class Campaign(_Strict):
    campaign: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    seed: int = Field(default=0, ge=0)
    space: Space
    objectives: list[Objective] = Field(min_length=1)
    outcome_constraints: list[OutcomeConstraint] = []
    budget: Budget
    batch_size: int = Field(default=4, ge=1)
    parallel_batches: int = Field(default=2, ge=1, description="batches in flight at once")
    designer: DesignerSpec = DesignerSpec()
    planner: PlannerSpec = PlannerSpec()
    learner: LearnerSpec = LearnerSpec()
    world: WorldSpec = WorldSpec()
    instruments: list[InstrumentSpec] = Field(default_factory=default_instruments)
    lab: str | None = Field(default=None, max_length=60, pattern=r"^[A-Za-z0-9_.\-]+$",
                            description="borrow the instruments of this lab (served by `athanor lab serve LAB.yaml` "
                            "on the Ray cluster of --ray-address) instead of having instruments of its own")
    lab_priority: int = Field(default=0, description="under a lab whose scheduler is `priority`: higher goes first")
    approval: ApprovalSpec = ApprovalSpec()
    store_url: str | None = None
    store_retry_s: float = Field(default=60.0, ge=0, description="how long a lost database connection is retried, "
                                 "the campaign waiting meanwhile, before it stops (resume it with --resume)")
    ray_address: str | None = None
    ioc: Literal["external", "embedded"] = Field(default="external", description="epics instruments: use the IOC "
                                                 "the EPICS_CA_* environment finds (external), or start "
                                                 "'athanor ioc' for this run (embedded: a dry run over EPICS)")

    @model_validator(mode="after")
    def _consistent(self) -> Campaign:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("objective names must be unique")
        if self.lab is not None and self.instruments != default_instruments():
            raise ValueError(f"a campaign on lab {self.lab!r} borrows the lab's instruments: remove 'instruments' "
                             "(the lab file describes them) or 'lab'")
        roles = {i.role for i in self.instruments}
        if roles != {"synthesis", "characterization"}:
            raise ValueError("instruments need at least one 'synthesis' and one 'characterization' instrument")
        if len({i.name for i in self.instruments}) != len(self.instruments):
            raise ValueError("instrument names must be unique")
        rules = self.approval.rules
        if self.approval.policy == "rules" and self.planner.route == "direct" and (
                rules.max_cost_usd is not None or rules.allowed_hazards is not None):
            raise ValueError("approval.rules.max_cost_usd and allowed_hazards need a route that prices its recipes "
                             "and names their hazards (planner.route: solid_state); the direct route does neither")
        return self

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def output_names(self) -> list[str]:
        """Everything a measurement must report: the objectives, then constrained outputs."""
        names = self.objective_names
        return names + [c.name for c in self.outcome_constraints if c.name not in names]

    def instrument(self, role: str) -> InstrumentSpec:
        return next(i for i in self.instruments if i.role == role)

    def instrument_named(self, name: str) -> InstrumentSpec | None:
        return next((i for i in self.instruments if i.name == name), None)


# --- loading, with every problem reported at its place -------------------------------------------


def _node_at(node: yaml.Node | None, loc: tuple[Any, ...], key: bool = False) -> yaml.Node | None:
    """The deepest YAML node along a pydantic error location (the key's node itself if `key`)."""
    for depth, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            child = None if pair is None else pair[0] if key and depth == len(loc) - 1 else pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        else:
            child = None
        if child is None:
            break
        node = child
    return node


def _dataset_problems(data: dict[str, Any], base_dir: Path | None, root: yaml.Node | None,
                      source: str) -> list[str]:
    """Columns the campaign names must exist in its dataset (checked on the raw file, so these are
    reported alongside any other problem)."""
    pool = data.get("space", {}).get("pool") if isinstance(data.get("space"), dict) else None
    if not isinstance(pool, dict) or not isinstance(pool.get("dataset"), str):
        return []
    path = Path(pool["dataset"])
    path = path if path.is_absolute() or base_dir is None else Path(base_dir) / path
    if not path.is_file():
        return []  # the schema reports the missing file
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except UnicodeDecodeError:
        return [_format(source, root, ("space", "pool", "dataset"), f"{path.name} is not UTF-8 text")]

    def named(key: str) -> list[tuple[tuple[Any, ...], Any]]:
        items = data.get(key)
        if not isinstance(items, list):
            return []
        return [((key, i, "name"), item.get("name")) for i, item in enumerate(items) if isinstance(item, dict)]

    inputs = pool.get("inputs") if isinstance(pool.get("inputs"), list) else []
    wanted = [(("space", "pool", "inputs", i), c) for i, c in enumerate(inputs)]
    wanted += named("objectives") + named("outcome_constraints")
    wanted = [(loc, column) for loc, column in wanted if isinstance(column, str)]
    problems = [
        _format(source, root, loc, f"column {column!r} is not in {path.name} (columns: {', '.join(header)})")
        for loc, column in wanted
        if column not in header
    ]
    present = [(loc, column) for loc, column in wanted if column in header]
    if present:
        problems += _row_problems(path, present, len(inputs), data, root, source)
    return problems


def _row_problems(path: Path, columns: list[tuple[tuple[Any, ...], str]], n_inputs: int, data: dict[str, Any],
                  root: yaml.Node | None, source: str) -> list[str]:
    """The dataset's rows must run: numbers in the named columns, and enough distinct input rows for
    the first batch. `columns` are the named columns the file has, with their place in the campaign
    (inputs first: `space.pool.inputs.i`)."""
    from athanor import pool

    where = ("space", "pool", "dataset")
    try:
        table = pool.read_table(path, [column for _, column in columns])
    except AthanorError as exc:
        return [_format(source, root, where, f"{path.name}: {exc}")]
    if table.empty:
        return [_format(source, root, where, f"{path.name} has a header but no data rows")]
    inputs = [column for loc, column in columns if loc[:3] == ("space", "pool", "inputs")]
    outputs = [column for loc, column in columns if loc[:3] != ("space", "pool", "inputs")]
    place = {}
    for loc, column in reversed(columns):  # a column named twice is reported at its first mention
        place[column] = loc
    cells = pool.cell_problems(path, table, inputs, outputs)
    problems = [_format(source, root, place[p.column], f"{path.name} {p}") for p in cells]
    batch = data.get("batch_size", Campaign.model_fields["batch_size"].default)
    if (any(p.column in inputs for p in cells) or len(inputs) < n_inputs
            or not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        return problems  # rows that cannot be counted yet, or a batch size the schema reports
    distinct = pool.distinct_rows(table, inputs)
    if distinct < batch:
        repeated = f" ({len(table)} rows, repeated inputs averaged into one)" if distinct < len(table) else ""
        loc = ("batch_size",) if "batch_size" in data else where
        default = "" if "batch_size" in data else " (the default)"
        problems.append(_format(source, root, loc, f"{path.name} has {distinct} distinct input "
                                f"row{'s' if distinct != 1 else ''}{repeated}, fewer than batch_size "
                                f"{batch}{default}: the first batch cannot be filled"))
    return problems


def _format(source: str, root: yaml.Node | None, loc: tuple[Any, ...], message: str, key: bool = False) -> str:
    node = _node_at(root, loc, key)
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    path = ".".join(str(p) for p in loc) or "(top level)"
    return f"{source}{line}: {path}: {message}"


def read_text(path: Path, what: str) -> str:
    """A file's text; a SpecError if it is missing or not UTF-8."""
    if not path.is_file():
        raise SpecError(str(path), [f"{path}: no such {what} file"])
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [f"{path}: not UTF-8 text (byte {exc.start})"]) from None


def read_yaml(text: str, source: str, what: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """A YAML mapping and its node tree (for line numbers); a SpecError naming the place if it is not one."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SpecError(source, [f"{source}{where}: malformed YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise SpecError(source, [f"{source}: the {what} file must be a mapping of keys to values"])
    return data, root


def validation_problems(exc: ValidationError, root: yaml.Node | None, source: str) -> list[str]:
    """Each of pydantic's errors as one line: file, line, key path, what is wrong."""
    problems = []
    for err in exc.errors():
        # Drop the discriminator tag pydantic inserts for tagged unions ("continuous", ...).
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _PARAM_TAGS))
        msg = err["msg"].removeprefix("Value error, ")
        unknown = err["type"] == "extra_forbidden"
        problems.append(_format(source, root, loc, f"unknown key {loc[-1]!r}" if unknown else msg, key=unknown))
    return problems


def parse_campaign(text: str, source: str = "<campaign>", base_dir: Path | None = None) -> Campaign:
    data, root = read_yaml(text, source, "campaign")
    problems = []
    try:
        spec = Campaign.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems += validation_problems(exc, root, source)
    problems += _dataset_problems(data, base_dir, root, source)
    if problems:
        raise SpecError(source, problems)
    return spec


_PARAM_TAGS = {"continuous", "integer", "categorical"}


def load_campaign(path: str | Path, check_plugins: bool = True) -> Campaign:
    """Read and validate a campaign file; by default also check its designer and world exist."""
    path = Path(path)
    spec = parse_campaign(read_text(path, "campaign"), str(path), base_dir=path.parent)
    if check_plugins:
        from athanor import registry

        try:
            registry.check_plugins(spec)
        except SpecError as exc:
            raise SpecError(str(path), [f"{path}: {p}" for p in exc.problems]) from None
        except AthanorError as exc:
            raise SpecError(str(path), [f"{path}: world: {exc}"]) from None
    return spec
