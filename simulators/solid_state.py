"""Solid-state synthesis world `solid_state`: a furnace recipe gives a phase assemblage; XRD reads it.

Recipe → product. Precursor powders (library phases, amounts in mol) are heated along a program
(ramp from 25 °C at `ramp_c_per_min`, hold `time_h` at `temperature_c`, cool at the same rate; or
several heating steps) in an atmosphere that sets pO2 (air 0.21, O2 1, N2/Ar 1e-5 bar).
Carbonates, hydroxides and nitrate hydrates first decompose to their oxides and gases above their
decomposition temperature (decomposition.py), into fine-grained fresh oxide. Each reaction (the
precursors' oxides → target, balanced on element counts, plus side reactions the library lists,
e.g. Fe2O3 → Fe3O4 + O2 where pO2 and T allow) runs with the first-order law (JMAK with n = 1)

    dξ/dt = k(T) · g(ΔG) · ξ_left,   k = ln2/t_half · exp(-Ea/R (1/T - 1/T_ref)),   g = max(0, 1 - exp(ΔG/RT)),

ξ_left the extent still possible from the limiting reactant; ΔG(T) = Σν·G_i(T) + Σν_gas·RT ln p_gas from
the library's tabulated data (phases.py; per-phase sources), so nothing forms where ΔG ≥ 0. The rate
is integrated exactly per time step over the piecewise-linear program (≤ 10 K or 1/40 of a hold per
step); reactions sharing a reactant are scaled so none over-draws it, and a reaction's rate is
multiplied by (150 nm / L̄)², L̄ the mean size of its reactants (1 for commercial powders; see
decomposition.py). Unreacted and excess (off-stoichiometric) precursors, and undecomposed ones, stay
in the product. Product crystallites (Scherrer size) coarsen as L² = L0² + G·∫exp(-Q/R (1/T - 1/T_g))dt
with L0 = 15 nm, Q = 300 kJ/mol, L = 60 nm after 1 h at 1200 °C; fresh oxide likewise from 20 nm (to 150);
precursor powders are 150 nm. Product: phase weight fractions (sum 1), sizes, and the mass balance
(grams in, solid out, gas released; amounts scaled to a `BATCH_G` batch where the recipe gives none).

Product → pattern. Cu Kα (1.54184 Å) powder pattern, 10–80° 2θ, 0.02° steps: each phase's peaks from
pymatgen's XRDCalculator (cached per phase), weighted by volume fraction / V_cell² (the Rietveld
scale-factor relation), pseudo-Voigt (η = 0.5) with FWHM² = Caglioti instrument term + Scherrer
size term (K = 0.9); an XRD-amorphous phase (the nitrate hydrates) gives a Gaussian halo instead
(phases.halo); plus a background ∝ 1/2θ (3 % of the strongest peak at 10°). Counting noise is Poisson
with the strongest point at 1/noise² counts (the campaign's `noise`; none when noise = 0).

Measure. `target_fraction`, `precursor_fraction` (dosed precursors and their decomposition oxides),
`impurity_fraction` (side phases) are weight fractions from an
ideal quantitative phase analysis of the noisy pattern: non-negative least squares of the known
phases' reference profiles plus background, scale factors × density normalized to 1. Their scatter
therefore comes from the counting statistics; the campaign's drift multiplies them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from athanor.errors import AthanorError
from athanor.simulators import decomposition as dec
from athanor.simulators import phases as lib
from athanor.simulators.base import ComputedWorld, sample_ordinal
from athanor.simulators.decomposition import G_GROWTH, L0_NM, L_PRECURSOR_NM, react
from athanor.simulators.decomposition import size as _size
from athanor.simulators.phases import CAGLIOTI, ETA, LAMBDA_A, SCHERRER_K  # noqa: F401 -- re-exported

ATMOSPHERES = {"air": 0.21, "O2": 1.0, "N2": 1e-5, "Ar": 1e-5}  # pO2, bar
ROOM_C, T_MAX_C = 25.0, 2000.0
SETTINGS = ("temperature_c", "time_h", "atmosphere", "ramp_c_per_min", "precursors")
BACKGROUND = 0.03
SCAN_S = 1750.0  # modelled scan time: 3501 steps at 0.5 s
BATCH_G = 2.0  # grams of powder weighed out when the recipe gives no amounts


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

    fresh = False  # its product is not "fresh oxide" (decomposition.Decomposition's is)

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
            self.solid_products = {product: 1.0}
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


class SolidStateWorld(ComputedWorld):
    """Solid-state synthesis from precursor powders, read by powder XRD (see the module docstring)."""

    name = "solid_state"
    settings = SETTINGS
    properties = ("target_fraction", "precursor_fraction", "impurity_fraction")
    direct_outputs = ()  # no probe reads these: the characterizer derives them from the XRD pattern

    def __init__(self, target: str | None = None, precursors: list[str] | dict[str, float] | None = None,
                 two_theta_range: tuple[float, float] = (10.0, 80.0), step_deg: float = 0.02,
                 outputs: list[str] | None = None, conditions: Any = None):
        super().__init__(outputs, conditions)
        self.target = self._target(target) if target is not None else None
        self.precursors = self._precursors(precursors, "world.options.precursors") if precursors is not None else None
        if self.target is not None and self.precursors is None:
            self.precursors = {p: 0.0 for p in lib.PHASES[self.target]["precursors"]}
        if self.target is not None:  # fail early when they cannot make it
            Rxn(list(dict.fromkeys(map(dec.oxide_of, self.precursors))), self.target)
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
        precursors = self.precursors
        for source, field in ((settings.get("precursors"), "precursors"),
                              (recipe.get("precursors"), "recipe.precursors")):
            if source:
                precursors = self._precursors(source, field)
        # No target named: the one the composition, or else the powders' cations, point to.
        cations = {e: 1.0 for p in precursors or {} for e in lib.parse(dec.oxide_of(p)) if e != "O"}
        named = self._target(recipe["target"]) if recipe.get("target") and self.target is None else None
        target = self.target or named or self._target_from(composition or cations)
        if precursors is None:
            precursors = {p: 0.0 for p in lib.PHASES[target]["precursors"]}
        if target in precursors:
            raise _fail("precursors", f"the target {target} cannot also be a precursor")
        main = Rxn(list(dict.fromkeys(map(dec.oxide_of, precursors))), target)  # from the oxides they give
        derived = not any(precursors.values())
        if derived:
            precursors = self._amounts(composition, target, precursors)
        present = {dec.oxide_of(p) for p, x in precursors.items() if x > 0}
        sides = [Rxn(p["side_from"], name) for name, p in lib.PHASES.items()
                 if name != target and p.get("side_from") and all(r in present for r in p["side_from"])]
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
                "decompositions": [dec.Decomposition(p) for p in precursors if dec.decomposes(p)],
                "derived": derived, "ramp": ramp, "atmosphere": atmosphere, "p_o2": ATMOSPHERES[atmosphere]}

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
    def _amounts(composition: dict[str, float], target: str, precursors: dict[str, float]) -> dict[str, float]:
        """Mol of each precursor: matched to the composition's cations (least squares), or else to the
        target's (stoichiometric, per mol of target)."""
        from scipy.optimize import nnls

        want = {e: n for e, n in lib.parse(target).items() if e != "O"}
        given = {e: float(v) for e, v in composition.items() if e != "O" and v > 0} or want
        missing = sorted(set(given) - {e for p in precursors for e in lib.parse(p)})
        if missing:
            raise _fail("composition", f"{', '.join(missing)} is in no precursor ({', '.join(precursors)})")
        names, cations = list(precursors), sorted(set(given) | set(want))
        a = np.array([[lib.parse(p).get(e, 0.0) for p in names] for e in cations], float)
        x, _ = nnls(a, np.array([given.get(e, 0.0) for e in cations]))
        return {p: float(v) for p, v in zip(names, x)}

    # --- the model --------------------------------------------------------------------------------
    def _product(self, plan: dict[str, Any]) -> dict[str, Any]:
        pieces = _program(plan["holds"], plan["ramp"])
        final, growth, fresh, gases = react(plan["precursors"], [*plan["decompositions"], *plan["reactions"]],
                                             pieces, plan["p_o2"])
        formed = [r.product for r in plan["reactions"]]  # the target first, then side phases
        oxides = list(dict.fromkeys(d.oxide for d in plan["decompositions"]))
        names = list(dict.fromkeys([*plan["precursors"], *oxides, *formed]))
        mass = {k: final.get(k, 0.0) * lib.molar_mass(k) for k in names}
        total = sum(mass.values())
        if total <= 0:
            raise _fail("precursors", "the amounts are all zero")
        mass_out = total
        mass = {k: m if m > 1e-12 * total else 0.0 for k, m in mass.items()}  # no 1e-45 fractions
        total = sum(mass.values())
        size = math.sqrt(L0_NM ** 2 + G_GROWTH * growth)
        l_fresh = dec.fresh_size(growth)
        return {"target": plan["target"], "precursors": sorted(plan["precursors"]),
                "decomposition_products": sorted(oxides), "side_phases": sorted(set(formed[1:])),
                "amorphous": [k for k in names if lib.is_amorphous(k)],
                "phases": {k: m / total for k, m in mass.items()},
                "crystallite_nm": {k: size if k in formed else _size(final[k], fresh.get(k, 0.0), l_fresh)
                                   for k in names},
                "atmosphere": plan["atmosphere"], "program_h": sum(p[0] for p in pieces),
                "mass_in_g": sum(x * lib.molar_mass(k) for k, x in plan["precursors"].items()),
                "mass_out_g": mass_out, "gas_released_g": {k: v * lib.molar_mass(k) for k, v in gases.items()}}

    @staticmethod
    def _summary(fractions: dict[str, float], product: dict[str, Any]) -> dict[str, float]:
        target = fractions.get(product["target"], 0.0)
        unreacted = {*product["precursors"], *product.get("decomposition_products", ())}
        precursor = sum(fractions.get(p, 0.0) for p in unreacted)
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

    def lab_recipe(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """The recipe as the lab runs it: powders to weigh out (g) and the furnace program. Fed back to
        `synthesize` as {"inputs": {ramp_c_per_min, atmosphere}, "precursors": doses, "steps": steps}."""
        composition, settings = self.split(recipe.get("inputs") or {})
        plan = self._plan(composition, settings, recipe)
        mass = {p: x * lib.molar_mass(p) for p, x in plan["precursors"].items() if x > 0}
        if not mass:
            raise _fail("precursors", "the amounts are all zero")
        scale = BATCH_G / sum(mass.values()) if plan["derived"] else 1.0
        return {"target": plan["target"], "doses": [{"formula": p, "mass_g": m * scale} for p, m in mass.items()],
                "steps": [{"temperature_c": t, "time_h": h} for t, h in plan["holds"]],
                "ramp_c_per_min": plan["ramp"], "atmosphere": plan["atmosphere"]}

    def _references(self, product: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Each phase's profile per unit volume fraction on the 2θ grid, and the phases' densities."""
        names = list(product["phases"])
        sizes = product.get("crystallite_nm", {})
        rows = [lib.profile(n, self.two_theta, sizes.get(n, L_PRECURSOR_NM), self._peak_range) for n in names]
        return names, np.array(rows), np.array([lib.reference_peaks(n, self._peak_range)["density"] for n in names])

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

    def diffract(self, product: dict[str, Any], key: str) -> tuple[np.ndarray, np.ndarray]:
        """One scan, as the diffractometer takes it: its instrument time and faults, then the pattern
        with counting noise seeded by the step key (strongest point 1/noise² counts; none at noise 0)."""
        rng = self.conditions.run_step(key, SCAN_S)
        noise = self.conditions.noise
        return self.pattern(product, rng if noise > 0 else None, counts=1.0 / noise ** 2 if noise > 0 else 1e4)

    def measure(self, product: dict[str, Any], probe: str, key: str) -> dict[str, float]:
        _, y = self.diffract(product, key)
        values = self._summary(self.quantify(product, y), product)
        gain = 1.0 + self.conditions.drift * sample_ordinal(key)
        return {name: float(values[name] * gain) for name in self.outputs}
