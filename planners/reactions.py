"""Solid-state reactions: precursor sets, balanced reactions, heating, driving force and score.

For a target (an oxide, or any compound free of C, H, N) the planner enumerates sets of library
precursors (planners/precursors.py) that supply every element but O, with no redundant member and
nothing else but C, H, N, O; balances each with pymatgen's `Reaction` as precursors (+ O2) → target
+ CO2 (for C) + H2O (H) + NO2 (N) (+ O2), dropping sets that would need a precursor as a product;
proposes a heating profile; scores the route; and computes masses for `batch_g` grams of target,
checking that every element is conserved.

Score (higher is better; each term in `details.score_breakdown`):

    score = 2·f(DF) − log10(1 + cost_usd) − 0.25·(n − 1) − Σ hazard weights − 0.5·[NO2 released]
            − 0.5·[a metal powder is oxidized]

DF = −ΔrG(T) per atom of the target formula, eV/atom, with ΔrG(T) ≈ ΔrH°298 − T·Σ ν_gas S°gas (the
gases' entropy dominates a solid-state reaction's ΔS) at the dwell temperature T; ΔrH from ΔfH° of
precursors, gases and target (tabulated; else estimated from binary library oxides of the same
oxidation states with ΔH_ox = 0; else unknown: DF = 0, neutral, flagged). f(x) = 0.5·tanh(x/0.5)
saturates: beyond ~0.5 eV/atom more driving force does not make a route better. cost_usd: the batch's
precursors; n: number of precursors; hazard weights per flag of each precursor (HAZARD_WEIGHTS);
NOx fumes need extraction; oxidizing a metal powder in the bed is strongly exothermic (runaway) and
often incomplete (oxide-coated cores), which the overall ΔrG would otherwise reward.

Heating (Tamman's rule). Each precursor is followed to what it is at the dwell (carbonates, nitrates,
hydroxides → oxides; metals → oxides when the target has O; Co3O4 → CoO); its Tamman temperature is
2/3 of that phase's melting point in K. Reaction sets in near the lowest one (the most mobile
reactant); the dwell is 150 °C above it, clamped to 600–1500 °C, 50 °C under the lowest melting point
of those phases and under any precursor's max_dwell_c (Li loss 900 °C; Fe2O3 → Fe3O4 + O2 1340 °C),
rounded down to 5 °C; 8 h.
Precursors that release gas (or metals that oxidize) get a 4 h calcination hold first, at their
highest decomposition temperature but ≥ 100 °C under the dwell and 50 °C under the melting point of
one that melts (at ≥ 350 °C; hydrates melt in their own water) before it decomposes; at least 300 °C.
Ramp 5 °C/min. Atmosphere: air; N2 when the cations are reduced (O2 released beyond what nitrate →
NO2 releases, e.g. MnO2 → LaMnO3); Ar for an oxygen-free target. Inputs temperature_c, time_h,
atmosphere, ramp_c_per_min (designed by the campaign) override the rule.

(synthesis.py turns the ranked routes into recipes and learns from failed ones.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable

from athanor.errors import AthanorError
from athanor.planners.precursors import (GAS_FOR, GAS_RELEASING, Library, composition, composition_key, elements,
                                         load_library, molar_mass, target_elements)
from athanor.planners.precursors import number as _number

EV_KJ = 96.485332  # kJ/mol per eV
W_DF, DF_SCALE, W_COST, W_N, W_NOX, W_METAL = 2.0, 0.5, 1.0, 0.25, 0.5, 0.5
HAZARD_WEIGHTS = {"pyrophoric": 1.0, "flammable": 0.7, "carcinogen": 0.3, "toxic": 0.3, "oxidizer": 0.3,
                  "corrosive": 0.3, "hygroscopic": 0.3, "irritant": 0.1}
T_MIN_C, T_MAX_C, ONSET_MARGIN_C, MELT_MARGIN_C, PRE_GAP_C, PRE_MIN_C = 600.0, 1500.0, 150.0, 50.0, 100.0, 300.0
PRE_H, DWELL_H, RAMP_C_PER_MIN = 4.0, 8.0, 5.0
ATMOSPHERES = ("air", "O2", "N2", "Ar")
MAX_PRECURSORS = 4


def _floor5(x: float) -> float:
    return 5.0 * math.floor(x / 5.0 + 1e-9)


def _exact(x: float) -> float:
    """Snap a balancing coefficient to a simple fraction (1/3, 1/12) where it is one to 1e-9."""
    fr = Fraction(x).limit_denominator(1000)
    return float(fr) if abs(float(fr) - x) <= 1e-9 * max(1.0, abs(x)) else float(x)


@dataclass(frozen=True)
class Balanced:
    """precursors (+ O2) → 1 target + gases; nu: mol per mol target; gases: released > 0, taken up < 0."""

    target: str
    nu: dict[str, float]
    gases: dict[str, float]

    @property
    def precursors(self) -> tuple[str, ...]:
        return tuple(self.nu)

    def equation(self) -> str:
        terms = [*((p, -v) for p, v in self.nu.items()), (self.target, 1.0), *self.gases.items()]
        fracs = [Fraction(v).limit_denominator(1000) for _, v in terms]
        scale = math.lcm(*(f.denominator for f in fracs))
        exact = all(abs(float(f) - v) < 1e-9 for f, (_, v) in zip(fracs, terms))
        nums = [float(f * scale) if exact else v for f, (_, v) in zip(fracs, terms)]
        fmt = lambda x: "" if abs(abs(x) - 1) < 1e-9 else f"{abs(x):.6g} "  # noqa: E731
        left = [f"{fmt(x)}{k}" for (k, _), x in zip(terms, nums) if x < -1e-12]
        right = [f"{fmt(x)}{k}" for (k, _), x in zip(terms, nums) if x > 1e-12]
        return f"{' + '.join(left)} -> {' + '.join(right)}"


def balance(target: str, precursors: Iterable[str]) -> Balanced | None:
    """Balance precursors (+ O2) → target + CO2/H2O/NO2 (+ O2) with pymatgen; None if it cannot be done
    with every precursor consumed and the gases released."""
    from pymatgen.analysis.reaction_calculator import Reaction, ReactionError
    from pymatgen.core import Composition

    target_elements(target)
    precursors = list(precursors)
    present = set().union(*(elements(p) for p in precursors)) if precursors else set()
    gases = [GAS_FOR[e] for e in "CHN" if e in present]
    t, o2, comps = composition(target), Composition("O2"), [composition(p) for p in precursors]
    try:
        r = Reaction([*comps, o2], [t, *(Composition(g) for g in gases)])
        r.normalize_to(t)
        nu = {p: _exact(-float(r.get_coeff(c))) for p, c in zip(precursors, comps)}
        gas = {g: _exact(float(r.get_coeff(Composition(g)))) for g in [*gases, "O2"]}
    except (ReactionError, ValueError):
        return None
    if any(v <= 1e-9 for v in nu.values()) or any(gas[g] < -1e-9 for g in gases):
        return None
    gas = {g: v for g, v in gas.items() if abs(v) > 1e-12}
    want = elements(target)
    for e in set(want) | present:
        have = sum(v * elements(p).get(e, 0.0) for p, v in nu.items())
        out = want.get(e, 0.0) + sum(v * elements(g).get(e, 0.0) for g, v in gas.items())
        if abs(have - out) > 1e-9 * max(1.0, out):
            return None
    return Balanced(target, nu, gas)


def precursor_sets(target: str, library: Library, allowed: Iterable[str] | None = None) -> list[tuple[str, ...]]:
    """Sets of library precursors that supply each element of the target but O, none redundant."""
    amounts = target_elements(target)
    supplied, oxygen = set(amounts) - {"O"}, "O" in amounts
    okay = set(amounts) | {"O", "C", "H", "N"}
    names = list(library.precursors) if allowed is None else [library.find(a) or a for a in allowed]
    unknown = [a for a in names if a not in library.precursors]
    if unknown:
        raise AthanorError(f"precursor {unknown[0]!r} is not in the library {library.path}")
    relevant = [f for f in names if set(elements(f)) <= okay and set(elements(f)) & supplied
                and (oxygen or library.precursors[f].kind == "metal") and composition_key(f) != composition_key(target)]
    missing = sorted(e for e in supplied if not any(e in elements(f) for f in relevant))
    if missing:
        raise AthanorError(f"target {target}: no library precursor supplies {', '.join(missing)}")
    order = list(amounts)
    found: set[tuple[str, ...]] = set()

    def grow(chosen: frozenset[str], covered: set[str]) -> None:
        left = [e for e in order if e in supplied - covered]
        if not left:
            sups = {f: set(elements(f)) & supplied for f in chosen}
            if all(sups[f] - set().union(*(sups[g] for g in chosen if g != f)) for f in chosen):
                found.add(tuple(sorted(chosen, key=lambda f: (min(order.index(e) for e in sups[f]), f))))
        elif len(chosen) < MAX_PRECURSORS:
            for f in relevant:
                if left[0] in elements(f) and f not in chosen:
                    grow(chosen | {f}, covered | set(elements(f)))

    grow(frozenset(), set())
    return sorted(found)


def target_enthalpy(target: str, library: Library) -> tuple[float | None, str]:
    """ΔfH° of the target (kJ/mol) and its basis: tabulated, estimated from binary oxides, or unknown."""
    hit = library.target_enthalpy(target)
    if hit is not None:
        return hit[0], f"tabulated ({library.sources.get(hit[1], hit[1])})"
    oxides = [f for f, p in library.precursors.items() if p.kind == "oxide" and p.dfh_kj_mol is not None]
    try:
        sets = precursor_sets(target, library, oxides)
    except AthanorError:
        sets = []
    for s in sets:
        b = balance(target, s)
        if b is not None and "O2" not in b.gases:
            value = sum(v * library.precursors[p].dfh_kj_mol for p, v in b.nu.items())
            return value, f"estimated: ΔH from {' + '.join(s)} taken as 0"
    return None, "unknown: neutral driving force"


def heating_profile(b: Balanced, library: Library) -> dict[str, Any]:
    """Tamman's-rule heating profile for a balanced route (see the module docstring)."""
    oxidizing = "O" in elements(b.target)
    ps = [library.precursors[f] for f in b.precursors]
    phases = {library.refractory(p.formula, oxidizing).formula: None for p in ps}
    tamman = {f: round(2 / 3 * (library.precursors[f].melts_c + 273.15) - 273.15, 1) for f in phases}
    onset = min(tamman.values())
    caps = {"furnace limit": T_MAX_C, **{f"{MELT_MARGIN_C:g} °C under the melting point of {f}":
                                         library.precursors[f].melts_c - MELT_MARGIN_C for f in phases}}
    caps.update({f"max_dwell_c of {p.formula} ({p.note})": p.max_dwell_c for p in ps if p.max_dwell_c is not None})
    cap_why = min(caps, key=caps.get)
    cap = _floor5(caps[cap_why])
    dwell = _floor5(min(max(onset + ONSET_MARGIN_C, T_MIN_C), cap))
    releasers = [p for p in ps if p.kind in GAS_RELEASING or (p.kind == "metal" and oxidizing)]
    pre = None
    if releasers:
        limits = [max([p.decomposes_c for p in releasers if p.decomposes_c is not None], default=PRE_MIN_C),
                  dwell - PRE_GAP_C]
        limits += [p.melts_c - MELT_MARGIN_C for p in releasers if p.melts_c is not None
                   and p.melts_c >= PRE_MIN_C + MELT_MARGIN_C and p.melts_c < (p.decomposes_c or math.inf)]
        pre = max(_floor5(min(limits)), PRE_MIN_C) if dwell - PRE_GAP_C >= PRE_MIN_C else None
    redox = b.gases.get("O2", 0.0) - 0.25 * b.gases.get("NO2", 0.0)
    atmosphere = "Ar" if not oxidizing else "N2" if redox > 1e-9 else "air"
    notes = [f"{p.formula} alone decomposes at {p.decomposes_c:g} °C, above the dwell: it must react with the others"
             for p in releasers if p.decomposes_c is not None and p.decomposes_c > dwell]
    if atmosphere == "N2":
        notes.append("N2: the cations are reduced (O2 is released); air works where the target is stable in it")
    if dwell >= cap:
        notes.append(f"dwell capped: {cap_why}")
    return {"tamman_c": tamman, "onset_c": onset, "dwell_c": dwell, "cap_c": cap, "cap_reason": cap_why,
            "calcination_c": pre, "atmosphere": atmosphere, "notes": notes}


def _energy(b: Balanced, library: Library, dwell_c: float, dfh_t: tuple[float | None, str]) -> dict[str, Any]:
    known = [library.precursors[p].dfh_kj_mol for p in b.precursors]
    atoms = sum(elements(b.target).values())
    if dfh_t[0] is None or None in known:
        return {"basis": dfh_t[1] if dfh_t[0] is None else "unknown: a precursor has no ΔfH in the library",
                "ev_per_atom": None}
    dh = dfh_t[0] + sum(v * library.gases[g].dfh_kj_mol for g, v in b.gases.items()) - sum(
        v * library.precursors[p].dfh_kj_mol for p, v in b.nu.items())
    ds = sum(v * library.gases[g].s_j_mol_k for g, v in b.gases.items()) / 1000.0
    dg = dh - (dwell_c + 273.15) * ds
    return {"basis": dfh_t[1], "dH_kj_per_mol": round(dh, 3), "dG_kj_per_mol": round(dg, 3),
            "T_c": dwell_c, "ev_per_atom": round(-dg / atoms / EV_KJ, 5)}


@dataclass
class RouteOption:
    balanced: Balanced
    heating: dict[str, Any]
    energy: dict[str, Any]
    cost_usd: float
    score: float
    breakdown: dict[str, float]


def masses(b: Balanced, batch_g: float) -> list[dict[str, Any]]:
    """mol and grams of each precursor for `batch_g` grams of target; checks element conservation."""
    n = _number(batch_g, "batch mass (g)", positive=True) / molar_mass(b.target)
    out = [{"formula": p, "mol": v * n, "mass_g": v * n * molar_mass(p)} for p, v in b.nu.items()]
    for e, k in elements(b.target).items():
        have = sum(x["mass_g"] / molar_mass(x["formula"]) * elements(x["formula"]).get(e, 0.0) for x in out)
        if e != "O" and abs(have - k * n) > 1e-9 * k * n:
            raise AthanorError(f"internal: {e} not conserved in {b.equation()}")
    return out


def rank_routes(target: str, library: Library | None = None, batch_g: float = 5.0, temperature_c: float | None = None,
                allowed: Iterable[str] | None = None) -> list[RouteOption]:
    """Every balanced route to the target, best score first (ties by formula)."""
    library = library or load_library()
    batch_g = _number(batch_g, "batch mass (g)", positive=True)
    dfh_t = target_enthalpy(target, library)
    out = []
    for s in precursor_sets(target, library, allowed):
        b = balance(target, s)
        if b is None:
            continue
        heat = heating_profile(b, library)
        energy = _energy(b, library, heat["dwell_c"] if temperature_c is None else temperature_c, dfh_t)
        cost = sum(x["mass_g"] / 1000 * library.precursors[x["formula"]].cost_usd_per_kg for x in masses(b, batch_g))
        df = energy["ev_per_atom"]
        oxidized = "O" in elements(target) and any(library.precursors[p].kind == "metal" for p in s)
        terms = {"driving_force": W_DF * DF_SCALE * math.tanh(df / DF_SCALE) if df is not None else 0.0,
                 "cost": -W_COST * math.log10(1 + cost), "n_precursors": -W_N * (len(s) - 1),
                 "hazards": -sum(HAZARD_WEIGHTS[h] for p in s for h in library.precursors[p].hazards),
                 "nox_fumes": -W_NOX if b.gases.get("NO2", 0) > 0 else 0.0,
                 "metal_oxidation": -W_METAL if oxidized else 0.0}
        out.append(RouteOption(b, heat, energy, cost, sum(terms.values()), {k: round(v, 4) for k, v in terms.items()}))
    if not out:
        raise AthanorError(f"target {target}: no library precursor set balances to it")
    return sorted(out, key=lambda o: (-o.score, o.balanced.precursors))
