"""The precursor library of solid-state routes: powders with cost, hazards, temperatures and enthalpies.

`load_library()` reads configs/library/precursors.yaml (or a given file), validates every entry with
pydantic and reports each problem with its place (`file: entry N (formula): problem`). Formulas are
read with pymatgen; hydrates are written as sold, "Fe(NO3)3·9H2O". Units and sources are in the file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from athanor.errors import AthanorError
from athanor.spec import Hazard

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "configs" / "library" / "precursors.yaml"
KINDS = ("oxide", "carbonate", "nitrate", "hydroxide", "metal")
GAS_RELEASING = ("carbonate", "nitrate", "hydroxide")
GAS_FOR = {"C": "CO2", "H": "H2O", "N": "NO2"}  # how C, H, N leave a route

HAZARD_FLAGS = get_args(Hazard)
_M = TypeVar("_M", bound=BaseModel)


@lru_cache(maxsize=4096)
def composition(formula: str) -> Any:
    """pymatgen Composition of a formula ("BaTiO3", "Fe(NO3)3·9H2O"); AthanorError naming a bad element."""
    from pymatgen.core import Composition, Element

    if not isinstance(formula, str) or not formula.strip():
        raise AthanorError(f"empty formula {formula!r}")
    parts = re.split(r"[·*]", formula.replace(" ", ""))
    text = ""
    for part in parts:
        count, body = re.match(r"(\d*\.?\d*)(.*)", part).groups()
        if not body:
            raise AthanorError(f"cannot read formula {formula!r}")
        text += f"({body}){count}" if len(parts) > 1 else body
    try:
        comp = Composition(text)
    except Exception as exc:  # noqa: BLE001 -- pymatgen raises several kinds for a bad formula
        raise AthanorError(f"cannot read formula {formula!r}: {exc}") from None
    unknown = [re.sub(r"[\d.+-]+$", "", str(s)) for s in comp if not isinstance(s, Element)]
    if unknown:
        raise AthanorError(f"unknown element {unknown[0]!r} in formula {formula!r}")
    if not len(comp) or any(n <= 0 for n in comp.values()):
        raise AthanorError(f"cannot read formula {formula!r}")
    return comp


def number(value: Any, what: str, positive: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if isinstance(value, bool) or not math.isfinite(x) or (positive and x <= 0):
        raise AthanorError(f"{what} must be a {'positive ' if positive else ''}number, got {value!r}")
    return x


def target_elements(formula: Any) -> dict[str, float]:
    """Element amounts of a target; AthanorError for a bad formula, an unknown element, or C/H/N in it."""
    if not isinstance(formula, str):
        raise AthanorError(f"target must be a formula, got {formula!r}")
    try:
        amounts = elements(formula)
    except AthanorError as exc:
        raise AthanorError(f"target {formula!r}: {exc}") from None
    leaving = sorted(set(amounts) & set(GAS_FOR))
    if leaving:
        raise AthanorError(f"target {formula}: contains {', '.join(leaving)}; only targets free of C, H and N "
                           "are planned (those leave as gas)")
    return amounts


def elements(formula: str) -> dict[str, float]:
    return {str(e): float(n) for e, n in composition(formula).items()}


def molar_mass(formula: str) -> float:
    """g/mol."""
    return float(composition(formula).weight)


def composition_key(formula: str) -> tuple[tuple[str, float], ...]:
    """Identity of a formula up to how it is written (not up to a multiple): "Fe(NO3)3·9H2O" == "FeN3O18H18"."""
    return tuple(sorted((e, round(n, 6)) for e, n in elements(formula).items()))


def reduced_key(formula: str) -> tuple[tuple[str, float], ...]:
    amounts = elements(formula)
    total = sum(amounts.values())
    return tuple(sorted((e, round(n / total, 6)) for e, n in amounts.items()))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Precursor(_Strict):
    formula: str
    kind: Literal["oxide", "carbonate", "nitrate", "hydroxide", "metal"]
    oxide: str | None = None
    cost_usd_per_kg: float = Field(gt=0)
    hazards: list[Hazard] = []
    melts_c: float | None = None
    decomposes_c: float | None = None
    t_source: str | None = None
    max_dwell_c: float | None = None
    dfh_kj_mol: float | None = None
    dfh_source: str | None = None
    note: str = ""

    @field_validator("formula")
    @classmethod
    def _formula(cls, value: str) -> str:
        try:
            composition(value)
        except AthanorError as exc:
            raise ValueError(str(exc)) from None
        return value

    def check(self) -> list[str]:
        """Problems a field validator cannot see alone."""
        problems = []
        if self.kind != "oxide" and self.oxide is None:
            problems.append(f"oxide: required for a {self.kind} (what it turns into on heating in air)")
        if self.melts_c is None and self.oxide is None:
            problems.append("melts_c: required unless `oxide` names what it turns into")
        if self.decomposes_c is not None and self.oxide is None:
            problems.append("oxide: required with decomposes_c (what it decomposes to)")
        if (self.melts_c is not None or self.decomposes_c is not None) and self.t_source is None:
            problems.append("t_source: required with a temperature")
        if self.dfh_kj_mol is not None and self.dfh_source is None:
            problems.append("dfh_source: required with dfh_kj_mol")
        if self.kind == "metal" and self.dfh_kj_mol not in (None, 0.0):
            problems.append(f"dfh_kj_mol: an element in its reference state has 0, not {self.dfh_kj_mol}")
        extra = set(elements(self.formula)) - {"C", "H", "N", "O"}
        if not extra:
            problems.append("formula: supplies no element other than C, H, N, O")
        return problems


class TargetEnthalpy(_Strict):
    formula: str
    dfh_kj_mol: float | None = None
    from_oxides: dict[str, float] | None = None
    dh_ox_kj_mol: float | None = None
    source: str
    note: str = ""

    @field_validator("formula")
    @classmethod
    def _formula(cls, value: str) -> str:
        return Precursor._formula(value)

    def check(self) -> list[str]:
        if (self.dfh_kj_mol is None) == (self.from_oxides is None or self.dh_ox_kj_mol is None):
            return ["give either dfh_kj_mol, or from_oxides with dh_ox_kj_mol"]
        return []


class Gas(_Strict):
    dfh_kj_mol: float
    s_j_mol_k: float
    source: str


class _File(_Strict):
    units: dict[str, str] = {}
    sources: dict[str, str]
    gases: dict[str, Gas]
    precursors: list[Any]
    targets: list[Any] = []


@dataclass(frozen=True)
class Library:
    """Validated precursors (by formula as written in the file), target enthalpies and gas data."""

    path: str
    precursors: dict[str, Precursor]
    gases: dict[str, Gas]
    sources: dict[str, str]
    target_dfh: dict[tuple, tuple[float, str]] = field(default_factory=dict)  # reduced key → (ΔfH/atom, source)

    def find(self, formula: str) -> str | None:
        """The library's formula for a precursor however written, or None."""
        if formula in self.precursors:
            return formula
        try:
            key = composition_key(formula)
        except AthanorError:
            return None
        return next((f for f in self.precursors if composition_key(f) == key), None)

    def refractory(self, formula: str, oxidizing: bool = True) -> Precursor:
        """What a precursor has become at a dwell: followed along `oxide` while it turns into that before
        melting (carbonates, nitrates, hydroxides, Co3O4 → CoO; metals only where the target has oxygen)."""
        p = self.precursors[formula]
        def transforms(p: Precursor) -> bool:
            return p.kind in GAS_RELEASING or (p.kind == "metal" and oxidizing) or p.melts_c is None or (
                p.kind == "oxide" and p.decomposes_c is not None and p.decomposes_c < p.melts_c)

        while p.oxide is not None and transforms(p):
            p = self.precursors[p.oxide]
        return p

    def target_enthalpy(self, formula: str) -> tuple[float, str] | None:
        """Tabulated ΔfH° (kJ/mol) of a target formula as written, and its source key; None if not tabulated."""
        hit = self.target_dfh.get(reduced_key(formula))
        if hit is None:
            return None
        per_atom, source = hit
        return per_atom * sum(elements(formula).values()), source


def _place(path: str, section: str, i: int, raw: Any) -> str:
    formula = raw.get("formula") if isinstance(raw, dict) else None
    return f"{path}: {section} {i + 1}" + (f" ({formula})" if formula else "")


def _errors(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


def _entry(model: type[_M], raw: Any, place: str, problems: list[str]) -> _M | None:
    """One library entry validated, or None with its problems added at its place."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems += [f"{place}: {e}" for e in _errors(exc)]
        return None


def _validate(text: str, path: str) -> Library:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AthanorError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise AthanorError(f"{path}: expected a mapping with sources, gases, precursors, targets")
    try:
        top = _File.model_validate(data)
    except ValidationError as exc:
        raise AthanorError(f"{path}: " + "; ".join(_errors(exc))) from None
    problems: list[str] = []
    missing_gases = {"O2", "CO2", "H2O", "NO2"} - set(top.gases)
    if missing_gases:
        problems.append(f"{path}: gases: missing {', '.join(sorted(missing_gases))}")
    entries: dict[str, Precursor] = {}
    places: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for i, raw in enumerate(top.precursors):
        place = _place(path, "entry", i, raw)
        p = _entry(Precursor, raw, place, problems)
        if p is None:
            continue
        here = p.check()
        for src in (p.t_source, p.dfh_source):
            if src is not None and src not in top.sources:
                here.append(f"unknown source {src!r}; known: {', '.join(top.sources)}")
        key = composition_key(p.formula)
        if key in seen:
            here.append(f"duplicate of {seen[key]}")
        seen[key] = p.formula
        problems += [f"{place}: {e}" for e in here]
        entries[p.formula], places[p.formula] = p, place
    for p in entries.values():
        place = places[p.formula]
        seen_chain, q = {p.formula}, p
        while q.oxide is not None:
            if q.oxide not in entries:
                problems.append(f"{place}: oxide {q.oxide!r} is not a library entry")
                break
            q = entries[q.oxide]
            if q.formula in seen_chain:
                problems.append(f"{place}: oxide chain loops at {q.formula}")
                break
            seen_chain.add(q.formula)
        if q.oxide is None and q.melts_c is None:
            problems.append(f"{place}: no melting point along its oxide chain (ends at {q.formula})")
        if p.oxide is not None and p.oxide in entries:
            extra = set(elements(p.oxide)) - set(elements(p.formula)) - {"O"}
            if extra:
                problems.append(f"{place}: oxide {p.oxide} has {', '.join(sorted(extra))}, which {p.formula} lacks")
    target_dfh: dict[tuple, tuple[float, str]] = {}
    for i, raw in enumerate(top.targets):
        place = _place(path, "targets entry", i, raw)
        t = _entry(TargetEnthalpy, raw, place, problems)
        if t is None:
            continue
        here = t.check()
        if t.source not in top.sources:
            here.append(f"unknown source {t.source!r}")
        value = t.dfh_kj_mol
        if not here and t.from_oxides is not None:
            bad = [o for o in t.from_oxides if o not in entries or entries[o].dfh_kj_mol is None]
            if bad:
                here.append(f"from_oxides: {', '.join(bad)} is not a library entry with dfh_kj_mol")
            else:
                value = sum(n * entries[o].dfh_kj_mol for o, n in t.from_oxides.items()) + t.dh_ox_kj_mol
                have: dict[str, float] = {}
                for o, n in t.from_oxides.items():
                    for e, c in elements(o).items():
                        have[e] = have.get(e, 0.0) + n * c
                want = elements(t.formula)
                if any(abs(have.get(e, 0.0) - want.get(e, 0.0)) > 1e-9 for e in set(have) | set(want)):
                    here.append(f"from_oxides do not add up to {t.formula}")
        problems += [f"{place}: {e}" for e in here]
        if not here:
            target_dfh[reduced_key(t.formula)] = (value / sum(elements(t.formula).values()), t.source)
    if problems:
        rest = [q.removeprefix(f"{path}: ") for q in problems[1:]]
        more = f" (and {len(rest)} more: {'; '.join(rest)})" if rest else ""
        raise AthanorError(problems[0] + more)
    return Library(path, entries, dict(top.gases), dict(top.sources), target_dfh)


@lru_cache(maxsize=16)
def _load(path: str, mtime_ns: int) -> Library:
    return _validate(Path(path).read_text(encoding="utf-8"), path)


def load_library(path: str | Path | None = None) -> Library:
    """Read and validate a precursor library (default: configs/library/precursors.yaml of this checkout)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    if not p.is_file():
        raise AthanorError(f"precursor library {p} not found")
    return _load(str(p), p.stat().st_mtime_ns)
