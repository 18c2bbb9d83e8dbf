"""Solid-state synthesis world `solid_state`: a furnace recipe gives a phase assemblage; XRD reads it.

Recipe → product. Precursor powders (library phases, amounts in mol) are heated along a program
(ramp from 25 °C at `ramp_c_per_min`, hold `time_h` at `temperature_c`, cool at the same rate; or
several heating steps) in an atmosphere that sets pO2 (air 0.21, O2 1, N2/Ar 1e-5 bar).
Each reaction (precursors → target, balanced on element counts, plus side reactions the library lists,
e.g. Fe2O3 → Fe3O4 + O2 where pO2 and T allow) runs with the first-order law (JMAK with n = 1)

    dξ/dt = k(T) · g(ΔG) · ξ_left,   k = ln2/t_half · exp(-Ea/R (1/T - 1/T_ref)),   g = max(0, 1 - exp(ΔG/RT)),

ξ_left the extent still possible from the limiting reactant; ΔG(T) = Σν·G_i(T) + Σν_gas·RT ln p_gas from
the library's tabulated data (phases.py; per-phase sources), so nothing forms where ΔG ≥ 0. The rate
is integrated exactly per time step over the piecewise-linear program (≤ 10 K or 1/40 of a hold per
step); reactions sharing a reactant are scaled so none over-draws it. Unreacted and excess (off-
stoichiometric) precursors stay in the product. Product crystallites (Scherrer size) coarsen as
L² = L0² + G·∫exp(-Q/R (1/T - 1/T_g))dt with L0 = 15 nm, Q = 300 kJ/mol, L = 60 nm after 1 h at
1200 °C; precursor powders are 150 nm. Product: phase weight fractions (sum 1) and sizes.

Product → pattern. Cu Kα (1.54184 Å) powder pattern, 10–80° 2θ, 0.02° steps: each phase's peaks from
pymatgen's XRDCalculator (cached per phase), weighted by volume fraction / V_cell² (the Rietveld
scale-factor relation), pseudo-Voigt (η = 0.5) with FWHM² = Caglioti instrument term + Scherrer
size term (K = 0.9), plus a background ∝ 1/2θ (3 % of the strongest peak at 10°). Counting noise is Poisson
with the strongest point at 1/noise² counts (the campaign's `noise`; none when noise = 0).

Measure. `target_fraction`, `precursor_fraction`, `impurity_fraction` are weight fractions from an
ideal quantitative phase analysis of the noisy pattern: non-negative least squares of the known
phases' reference profiles plus background, scale factors × density normalized to 1. Their scatter
therefore comes from the counting statistics; the campaign's drift multiplies them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from athanor.errors import AthanorError
from athanor.simulators import phases as lib
from athanor.simulators.base import ComputedWorld, sample_ordinal

ATMOSPHERES = {"air": 0.21, "O2": 1.0, "N2": 1e-5, "Ar": 1e-5}  # pO2, bar
ROOM_C, T_MAX_C = 25.0, 2000.0
SETTINGS = ("temperature_c", "time_h", "atmosphere", "ramp_c_per_min", "precursors")
L0_NM, L_PRECURSOR_NM, Q_GROWTH, T_GROWTH, G_GROWTH = 15.0, 150.0, 300.0, 1473.15, 60.0 ** 2 - 15.0 ** 2
CAGLIOTI = (0.0045, -0.0020, 0.0040)  # U, V, W in deg²
ETA, SCHERRER_K, BACKGROUND = 0.5, 0.9, 0.03
LAMBDA_A = 1.54184
SCAN_S = 1750.0  # modelled scan time: 3501 steps at 0.5 s


def _fail(field: str, message: str) -> AthanorError:
    return AthanorError(f"solid_state: {field}: {message}")


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _fail(field, f"expected a number, got {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise _fail(field, f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise _fail(field, f"expected a finite number, got {value!r}")
    return x


def _phase(formula: Any, field: str) -> str:
    name = lib.lookup(formula) if isinstance(formula, str) else None
    if name is None or name in lib.GASES:
        raise _fail(field, f"unknown phase {formula!r}; known: {', '.join(lib.SOLIDS)}")
    return name


def _side(terms: list[tuple[str, float]]) -> str:
    return " + ".join(f"{'' if abs(v - 1) < 1e-9 else f'{v:.4g} '}{k}" for k, v in terms)


class Rxn:
    """One balanced reaction, per mole of its product phase; gases exchanged with the atmosphere."""

    def __init__(self, reactants: list[str], product: str):
        self.product, self.kinetics = product, lib.PHASES[product]["kinetics"]
        elements = sorted({e for k in [*reactants, product, *lib.GASES] for e in lib.parse(k)})
        for gases in ((), lib.GASES):  # gas exchange with the atmosphere only when the solids cannot balance
            species = [*reactants, *gases]
            a = np.array([[lib.parse(k).get(e, 0.0) for k in species] for e in elements])
            b = np.array([lib.parse(product).get(e, 0.0) for e in elements])
            x, *_ = np.linalg.lstsq(a, b, rcond=None)  # species' consumption per mol of product
            if np.abs(a @ x - b).max() > 1e-9 or any(x[i] < -1e-9 for i in range(len(reactants))):
                continue
            self.solid_reactants = {k: float(v) for k, v in zip(reactants, x) if v > 1e-9}
            # gases: > 0 released to the atmosphere, < 0 taken from it
            self.gases = {k: -float(v) for k, v in zip(gases, x[len(reactants):]) if abs(v) > 1e-9}
            self.nu = {**{k: -v for k, v in self.solid_reactants.items()}, **self.gases, product: 1.0}
            left = [*self.solid_reactants.items(), *((k, -v) for k, v in self.gases.items() if v < 0)]
            right = [(product, 1.0), *((k, v) for k, v in self.gases.items() if v > 0)]
            self.equation = f"{_side(left)} -> {_side(right)}"
            return
        raise _fail("precursors", f"cannot balance {' + '.join(reactants)} -> {product}")

    def delta_g(self, T: float, p_o2: float) -> float:
        """ΔG of the reaction at T (K) in the atmosphere, kJ per mol of product."""
        g = sum(v * lib.gibbs(k, T) for k, v in self.nu.items())
        return g + sum(v * lib.R_KJ * T * math.log(p_o2) for v in self.gases.values())

    def rate(self, T: float, p_o2: float) -> float:
        """First-order rate constant times the driving-force factor, 1/h."""
        dg = self.delta_g(T, p_o2)
        if dg >= 0:
            return 0.0
        kin = self.kinetics
        arrhenius = math.exp(-kin["Ea"] / lib.R_KJ * (1 / T - 1 / (kin["T_ref_C"] + 273.15)))
        return math.log(2) / kin["t_half_h"] * arrhenius * -math.expm1(dg / (lib.R_KJ * T))


def _program(holds: list[tuple[float, float]], ramp: float) -> list[tuple[float, float, float]]:
    """The furnace program as (duration_h, T_start_K, T_end_K) pieces: ramp, hold, ..., cool."""
    pieces, t_now = [], ROOM_C
    for t_c, hold_h in holds + [(ROOM_C, 0.0)]:
        if t_c != t_now:
            pieces.append((abs(t_c - t_now) / ramp / 60.0, t_now + 273.15, t_c + 273.15))
        if hold_h > 0:
            pieces.append((hold_h, t_c + 273.15, t_c + 273.15))
        t_now = t_c
    return pieces


def _react(amounts: dict[str, float], reactions: list[Rxn], pieces: list[tuple[float, float, float]],
           p_o2: float) -> tuple[dict[str, float], float]:
    """Integrate the reactions over the program; returns final amounts (mol) and the growth integral (h)."""
    n = dict(amounts)
    growth = 0.0
    for duration, t0, t1 in pieces:
        steps = max(1, math.ceil(abs(t1 - t0) / 10.0)) if t1 != t0 else 40
        dt = duration / steps
        for i in range(steps):
            T = t0 + (t1 - t0) * (i + 0.5) / steps
            growth += dt * math.exp(-Q_GROWTH / lib.R_KJ * (1 / T - 1 / T_GROWTH))
            extents = []
            for r in reactions:
                rate = r.rate(T, p_o2)
                left = min(n[k] / v for k, v in r.solid_reactants.items())
                extents.append(left * -math.expm1(-rate * dt) if rate > 0 and left > 0 else 0.0)
            for k in sorted({k for r in reactions for k in r.solid_reactants}):
                demand = sum(x * r.solid_reactants.get(k, 0.0) for x, r in zip(extents, reactions))
                if demand > n[k] > 0:
                    extents = [x * n[k] / demand if k in r.solid_reactants else x for x, r in zip(extents, reactions)]
            for x, r in zip(extents, reactions):
                for k, v in r.solid_reactants.items():
                    n[k] = max(0.0, n[k] - v * x)
                n[r.product] = n.get(r.product, 0.0) + x
    return n, growth


def _pseudo_voigt(tt: np.ndarray, centers: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    dx = tt[None, :] - centers[:, None]
    h = fwhm[:, None]
    gauss = np.sqrt(4 * np.log(2) / np.pi) / h * np.exp(-4 * np.log(2) * (dx / h) ** 2)
    lorentz = (2 / (np.pi * h)) / (1 + 4 * (dx / h) ** 2)
    return ETA * lorentz + (1 - ETA) * gauss


class SolidStateWorld(ComputedWorld):
    """Solid-state synthesis from precursor powders, read by powder XRD (see the module docstring)."""

    name = "solid_state"
    properties = ("target_fraction", "precursor_fraction", "impurity_fraction")

    def __init__(self, target: str | None = None, precursors: list[str] | dict[str, float] | None = None,
                 two_theta_range: tuple[float, float] = (10.0, 80.0), step_deg: float = 0.02,
                 outputs: list[str] | None = None, conditions: Any = None):
        super().__init__(outputs, conditions)
        self.target = self._target(target) if target is not None else None
        self.precursors = self._precursors(precursors, "world.options.precursors") if precursors is not None else None
        if self.target is not None and self.precursors is None:
            self.precursors = {p: 0.0 for p in lib.PHASES[self.target]["precursors"]}
        if self.target is not None:
            Rxn(list(self.precursors), self.target)  # fail early when they cannot make it
        lo, hi = (_number(v, "world.options.two_theta_range") for v in two_theta_range)
        step = _number(step_deg, "world.options.step_deg")
        if not 0 < lo < hi < 180 or not 0 < step < hi - lo:
            raise _fail("world.options", "two_theta_range must lie in (0, 180)° with 0 < step_deg < its width")
        self.two_theta = np.round(np.arange(lo, hi + step / 2, step), 6)
        self._peak_range = (max(0.0, lo - 5.0), min(180.0, hi + 5.0))

    # --- inputs -----------------------------------------------------------------------------------
    @staticmethod
    def _target(target: Any) -> str:
        name = _phase(target, "target")
        if "kinetics" not in lib.PHASES[name] or "precursors" not in lib.PHASES[name]:
            makeable = [k for k, p in lib.PHASES.items() if "precursors" in p]
            raise _fail("target", f"{target!r} is a precursor here, not a product; targets: {', '.join(makeable)}")
        return name

    @staticmethod
    def _precursors(value: Any, field: str) -> dict[str, float]:
        """Precursors as {phase: mol}; a list means 'stoichiometric' (amount 0 = to be filled in)."""
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)) and value:
            items = []
            for p in value:
                if isinstance(p, dict):
                    if "mass_g" in p:
                        name = _phase(p.get("formula"), field)
                        items.append((name, _number(p["mass_g"], f"{field}.mass_g") / lib.molar_mass(name)))
                    else:
                        amount = next((p[k] for k in ("amount", "amount_mol", "mol", "moles") if k in p), 0.0)
                        items.append((p.get("formula"), amount))
                else:
                    items.append((p, 0.0))
        else:
            raise _fail(field, f"expected a list of formulas or a mapping formula → mol, got {value!r}")
        out: dict[str, float] = {}
        for formula, amount in items:
            x = _number(amount, f"{field}[{formula!r}]")
            if x < 0:
                raise _fail(field, f"amount of {formula!r} is negative ({x:g})")
            name = _phase(formula, field)
            out[name] = out.get(name, 0.0) + x
        return out

    def _plan(self, composition: dict[str, float], settings: dict[str, Any],
              recipe: dict[str, Any] | None = None) -> dict[str, Any]:
        recipe = recipe or {}
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise _fail(unknown[0], f"unknown setting; known: {', '.join(SETTINGS)}")
        target = self.target
        if target is None:
            target = self._target_from(composition)
        precursors = self.precursors if self.target is not None else None
        for source, field in ((settings.get("precursors"), "precursors"),
                              (recipe.get("precursors"), "recipe.precursors")):
            if source:
                precursors = self._precursors(source, field)
        if precursors is None:
            precursors = {p: 0.0 for p in lib.PHASES[target]["precursors"]}
        if target in precursors:
            raise _fail("precursors", f"the target {target} cannot also be a precursor")
        main = Rxn(list(precursors), target)
        if not any(precursors.values()):
            precursors = self._amounts(composition, main, precursors)
        sides = [Rxn(p["side_from"], name) for name, p in lib.PHASES.items()
                 if name != target and p.get("side_from") and all(precursors.get(r, 0) > 0 for r in p["side_from"])]
        holds = [(_number(s["temperature_c"], "steps.temperature_c"), _number(s.get("time_h", 0), "steps.time_h"))
                 for s in recipe.get("steps") or [] if isinstance(s, dict) and "temperature_c" in s]
        if not holds:
            if "temperature_c" not in settings:
                raise _fail("temperature_c", "required (the hold temperature, °C)")
            holds = [(_number(settings["temperature_c"], "temperature_c"),
                      _number(settings.get("time_h", 4.0), "time_h"))]
        for t_c, hold_h in holds:
            if t_c <= -273.15:
                raise _fail("temperature_c", f"{t_c:g} °C is not above absolute zero")
            if t_c > T_MAX_C:
                raise _fail("temperature_c", f"{t_c:g} °C is above the furnace limit of {T_MAX_C:g} °C")
            if hold_h < 0:
                raise _fail("time_h", f"hold time cannot be negative ({hold_h:g} h)")
        ramp = _number(settings.get("ramp_c_per_min", 5.0), "ramp_c_per_min")
        if ramp <= 0:
            raise _fail("ramp_c_per_min", f"must be positive, got {ramp:g}")
        atmosphere = settings.get("atmosphere", "air")
        if atmosphere not in ATMOSPHERES:
            raise _fail("atmosphere", f"unknown atmosphere {atmosphere!r}; known: {', '.join(ATMOSPHERES)}")
        return {"target": target, "precursors": precursors, "reactions": [main, *sides], "holds": holds,
                "ramp": ramp, "atmosphere": atmosphere, "p_o2": ATMOSPHERES[atmosphere]}

    @staticmethod
    def _target_from(composition: dict[str, float]) -> str:
        if not composition:
            raise _fail("target", "no target: set world.options.target, or give its formula as the composition")
        formula = "".join(f"{e}{n:g}" for e, n in composition.items() if n > 0)
        exact = lib.lookup(formula)
        if exact and "kinetics" in lib.PHASES[exact]:
            return exact
        cations = {e for e in composition if e != "O" and composition[e] > 0}
        matches = [k for k, p in lib.PHASES.items() if "kinetics" in p and set(lib.parse(k)) - {"O"} == cations]
        if len(matches) != 1:
            raise _fail("composition", f"no single library target for {formula}; set world.options.target")
        return matches[0]

    @staticmethod
    def _amounts(composition: dict[str, float], main: Rxn, precursors: dict[str, float]) -> dict[str, float]:
        """Mol of each precursor: stoichiometric, or matched to the composition's cations (least squares)."""
        from scipy.optimize import nnls

        cations = sorted({e for p in precursors for e in lib.parse(p)} - {"O"})
        given = {e: float(v) for e, v in composition.items() if e != "O" and v > 0}
        if not given:
            return {p: main.solid_reactants.get(p, 0.0) for p in precursors}
        missing = sorted(set(given) - set(cations))
        if missing:
            raise _fail("composition", f"{', '.join(missing)} is in no precursor ({', '.join(precursors)})")
        names = list(precursors)
        a = np.array([[lib.parse(p).get(e, 0.0) for p in names] for e in cations], float)
        b = np.array([given.get(e, 0.0) for e in cations])
        x, _ = nnls(a, b)
        return {p: float(v) for p, v in zip(names, x)}

    # --- the model --------------------------------------------------------------------------------
    def _product(self, plan: dict[str, Any]) -> dict[str, Any]:
        pieces = _program(plan["holds"], plan["ramp"])
        final, growth = _react(plan["precursors"], plan["reactions"], pieces, plan["p_o2"])
        names = list(dict.fromkeys([*plan["precursors"], plan["target"], *(r.product for r in plan["reactions"])]))
        mass = {k: final.get(k, 0.0) * lib.molar_mass(k) for k in names}
        total = sum(mass.values())
        if total <= 0:
            raise _fail("precursors", "the amounts are all zero")
        mass = {k: m if m > 1e-12 * total else 0.0 for k, m in mass.items()}  # no 1e-45 fractions
        total = sum(mass.values())
        size = math.sqrt(L0_NM ** 2 + G_GROWTH * growth)
        return {"target": plan["target"], "precursors": sorted(plan["precursors"]),
                "phases": {k: m / total for k, m in mass.items()},
                "crystallite_nm": {k: L_PRECURSOR_NM if k in plan["precursors"] else size for k in names},
                "atmosphere": plan["atmosphere"], "program_h": sum(p[0] for p in pieces)}

    @staticmethod
    def _summary(fractions: dict[str, float], product: dict[str, Any]) -> dict[str, float]:
        target = fractions.get(product["target"], 0.0)
        precursor = sum(fractions.get(p, 0.0) for p in product["precursors"])
        return {"target_fraction": target, "precursor_fraction": precursor,
                "impurity_fraction": max(0.0, 1.0 - target - precursor)}

    def evaluate(self, composition: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
        plan = self._plan(composition, settings)
        product = self._product(plan)
        t_hold = max(t for t, _ in plan["holds"]) + 273.15
        main = plan["reactions"][0]
        dg = main.delta_g(t_hold, plan["p_o2"])
        atoms = sum(lib.parse(plan["target"]).values())
        peaks = lib.reference_peaks(plan["target"], self._peak_range)
        top = np.argsort(peaks["intensity"])[::-1][:5]
        scale = peaks["intensity"].max()
        return {**self._summary(product["phases"], product), "target": plan["target"], "reaction": main.equation,
                "phases": product["phases"], "precursor_mol": plan["precursors"],
                "driving_force_kj_per_mol": dg, "driving_force_ev_per_atom": dg / 96.485332 / atoms,
                "crystallite_nm": product["crystallite_nm"][plan["target"]], "program_h": product["program_h"],
                "target_peaks": [{"two_theta": round(float(peaks["two_theta"][i]), 3), "hkl": peaks["hkl"][i],
                                  "intensity": round(float(100 * peaks["intensity"][i] / scale), 1)}
                                 for i in sorted(top, key=lambda i: peaks["two_theta"][i])]}

    # --- the instrument steps ---------------------------------------------------------------------
    def synthesize(self, recipe: dict[str, Any], key: str) -> dict[str, Any]:
        composition, settings = self.split(recipe.get("inputs") or {})
        plan = self._plan(composition, settings, recipe)
        product = self._product(plan)
        self.conditions.run_step(key, product["program_h"] * 3600.0)
        return product

    def _references(self, product: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Each phase's profile per unit volume fraction on the 2θ grid, and the phases' densities."""
        names = list(product["phases"])
        tt = self.two_theta
        u, v, w = CAGLIOTI
        rows, dens = [], []
        for name in names:
            pk = lib.reference_peaks(name, self._peak_range)
            x, y = pk["two_theta"], pk["intensity"]
            tan = np.tan(np.radians(x / 2))
            size_nm = product.get("crystallite_nm", {}).get(name, L_PRECURSOR_NM)
            size_deg = np.degrees(SCHERRER_K * LAMBDA_A / (10 * size_nm * np.cos(np.radians(x / 2))))
            fwhm = np.sqrt(np.maximum(u * tan ** 2 + v * tan + w, 1e-4) + size_deg ** 2)
            rows.append(y @ _pseudo_voigt(tt, x, fwhm) if len(x) else np.zeros_like(tt))
            dens.append(pk["density"])
        return names, np.array(rows), np.array(dens)

    def pattern(self, product: dict[str, Any], rng: np.random.Generator | None = None,
                counts: float = 1e4) -> tuple[np.ndarray, np.ndarray]:
        """(2θ in degrees, intensity in counts): noiseless without `rng`, else Poisson counts."""
        names, refs, dens = self._references(product)
        w = np.array([product["phases"][n] for n in names])
        vol = (w / dens) / np.sum(w / dens)
        signal = vol @ refs
        peak = signal.max() if signal.max() > 0 else 1.0
        y = counts * (signal / peak + BACKGROUND * (10.0 / self.two_theta))
        if rng is not None:
            y = rng.poisson(y).astype(float)
        return self.two_theta.copy(), y

    def quantify(self, product: dict[str, Any], intensity: np.ndarray) -> dict[str, float]:
        """Weight fractions from a pattern: NNLS of the phases' reference profiles plus background."""
        from scipy.optimize import nnls

        names, refs, dens = self._references(product)
        basis = np.vstack([refs / refs.max(axis=1, initial=1e-30, keepdims=True), np.ones_like(self.two_theta),
                           10.0 / self.two_theta])
        scale = np.abs(intensity).max() or 1.0
        coef, _ = nnls(basis.T, intensity / scale)
        vol = coef[: len(names)] / refs.max(axis=1, initial=1e-30)
        mass = vol * dens
        total = mass.sum()
        return {n: float(m / total) if total > 0 else 0.0 for n, m in zip(names, mass)}

    def measure(self, product: dict[str, Any], probe: str, key: str) -> dict[str, float]:
        rng = self.conditions.run_step(key, SCAN_S)
        noise = self.conditions.noise
        _, y = self.pattern(product, rng if noise > 0 else None, counts=1.0 / noise ** 2 if noise > 0 else 1e4)
        values = self._summary(self.quantify(product, y), product)
        gain = 1.0 + self.conditions.drift * sample_ordinal(key)
        return {name: float(values[name] * gain) for name in self.outputs}
