"""Decomposing precursors of the `solid_state` world: carbonates, hydroxides and nitrate hydrates.

Each turns into its oxide and gases when heated, balanced on element counts — carbon leaves as CO2,
hydrogen as H2O, nitrogen as NO2 and the oxygen left over as O2:

    MgCO3 → MgO + CO2                       Zn(NO3)2·6H2O → ZnO + 2 NO2 + ½ O2 + 6 H2O
    Mg(OH)2 → MgO + H2O                     Fe(NO3)3·9H2O → ½ Fe2O3 + 3 NO2 + ¾ O2 + 9 H2O
    Al(OH)3 → ½ Al2O3 + 3/2 H2O             ZnCO3 → ZnO + CO2

Driving force. No ΔG is used for these (the hydrated salts have no Gibbs energies in the library):
each has a decomposition temperature T_d, below which nothing happens. Above it, with the gas swept
away by the furnace atmosphere (irreversible), the first-order law

    dξ/dt = k · ξ_left,   k = ln2 / t½ · exp(-Ea/R (1/T - 1/T_d)),   t½ = 0.1 h at T_d, Ea = 150 kJ/mol

(Ea typical of carbonate and hydroxide decompositions, e.g. 132–153 kJ/mol for zinc carbonate
hydroxide, Kanari et al. 2004, Thermochim. Acta 410, 93). On a 5 °C/min ramp a precursor is gone
within about 40 K above T_d; held below T_d it stays, and its leftover is part of the product.
The T_d values (`DECOMPOSITIONS`, each with its source) are tabulated decomposition temperatures;
thermal analysis at 10 K/min often shows the mass loss ending 100–250 K higher.
Al(OH)3 is taken to give corundum directly (really transition aluminas first, α-Al2O3 above
≈ 1100 °C): a simplification.

Fresh oxide. The oxide is born fine-grained: crystallites of `L_FRESH_NM` = 20 nm instead of the
150 nm of a commercial powder, coarsening afterwards by the products' law (solid_state.py) up to
those 150 nm. Reactions on fine powders are faster: solid_state multiplies a reaction's rate by
(150 nm / L̄)², L̄ the mean crystallite size of its solid reactants (Jander's diffusion-controlled law:
the time to a given conversion grows as the particle radius squared).

`react` integrates decompositions and reactions together over the furnace program (it lives here
because it keeps track of which part of each phase is fresh oxide); solid_state.py describes the law.
"""

from __future__ import annotations

import math
from typing import Any

from athanor.simulators import phases as lib

L_FRESH_NM = 20.0
# Crystallite growth (solid_state.py): L² = L0² + G·∫exp(-Q/R (1/T - 1/T_g))dt; commercial powders 150 nm.
L0_NM, L_PRECURSOR_NM, Q_GROWTH, T_GROWTH, G_GROWTH = 15.0, 150.0, 300.0, 1473.15, 60.0 ** 2 - 15.0 ** 2
T_HALF_H, EA_KJ = 0.1, 150.0

_CRC = "CRC Handbook of Chemistry and Physics, 'Physical Constants of Inorganic Compounds' (decomposes at)"
DECOMPOSITIONS: dict[str, dict[str, Any]] = {
    "MgCO3": {"oxide": "MgO", "T_d_C": 350.0, "source": _CRC},
    "Mg(OH)2": {"oxide": "MgO", "T_d_C": 350.0, "source": _CRC},
    "Al(OH)3": {"oxide": "Al2O3", "T_d_C": 300.0, "source": _CRC},
    "ZnCO3": {"oxide": "ZnO", "T_d_C": 140.0, "source": _CRC},
    "Zn(NO3)2·6H2O": {"oxide": "ZnO", "T_d_C": 350.0,
                      "source": "estimate: ZnO is the residue of zinc nitrate hydrates and hydroxynitrates "
                                "above ≈ 350 °C in thermogravimetry (not a tabulated value)"},
    "Fe(NO3)3·9H2O": {"oxide": "Fe2O3", "T_d_C": 250.0,
                      "source": "Elmasry, Gaber & Khater, 'Thermal decomposition of Ni(II) and Fe(III) nitrates "
                                "and their mixture', J. Therm. Anal. Calorim.: Fe2O3 is the final product at 523 K"},
}


def decomposes(name: str) -> bool:
    return name in DECOMPOSITIONS


def oxide_of(name: str) -> str:
    """The phase a precursor contributes to reactions: its oxide if it decomposes, else itself."""
    return DECOMPOSITIONS[name]["oxide"] if name in DECOMPOSITIONS else name


class Decomposition:
    """precursor → y oxide + gases, per mole of precursor; the same interface as solid_state.Rxn."""

    fresh = True  # its oxide is fine-grained

    def __init__(self, precursor: str):
        data = DECOMPOSITIONS[precursor]
        self.precursor, self.oxide, self.t_d = precursor, data["oxide"], data["T_d_C"] + 273.15
        p, ox = lib.parse(precursor), lib.parse(data["oxide"])
        cation = next(e for e in ox if e != "O")
        y = p[cation] / ox[cation]
        leftover = {e: n - y * ox.get(e, 0.0) for e, n in p.items()}
        if any(abs(v) > 1e-9 for e, v in leftover.items() if e not in ("C", "H", "N", "O")):
            raise ValueError(f"{precursor} does not decompose to {data['oxide']} alone")
        gases = {"CO2": leftover.get("C", 0.0), "H2O": leftover.get("H", 0.0) / 2, "NO2": leftover.get("N", 0.0)}
        gases["O2"] = (leftover.get("O", 0.0) - 2 * gases["CO2"] - gases["H2O"] - 2 * gases["NO2"]) / 2
        if gases["O2"] < -1e-9:
            raise ValueError(f"{precursor} needs oxygen to decompose; not modelled")
        self.solid_reactants = {precursor: 1.0}
        self.solid_products = {data["oxide"]: y}
        self.gases = {k: v for k, v in gases.items() if v > 1e-9}  # released, mol per mol of precursor
        right = [f"{'' if abs(v - 1) < 1e-9 else f'{v:.4g} '}{k}" for k, v in [(self.oxide, y), *self.gases.items()]]
        self.equation = f"{precursor} -> {' + '.join(right)}"

    def rate(self, T: float, p_o2: float = 0.21) -> float:
        """First-order rate constant, 1/h: zero below the decomposition temperature."""
        if T < self.t_d:
            return 0.0
        return math.log(2) / T_HALF_H * math.exp(-EA_KJ / lib.R_KJ * (1 / T - 1 / self.t_d))


def fresh_size(growth: float) -> float:
    """Crystallite size (nm) of fresh oxide after the growth integral (h): it coarsens by the products'
    law, up to the commercial powders' 150 nm (whose own coarsening is neglected)."""
    return min(L_PRECURSOR_NM, math.sqrt(L_FRESH_NM ** 2 + G_GROWTH * growth))


def size(n: float, fresh: float, l_fresh: float) -> float:
    """Mean crystallite size (nm) of a phase, part of it fresh oxide, the rest commercial powder."""
    f = fresh / n if n > 0 else 0.0
    return f * l_fresh + (1 - f) * L_PRECURSOR_NM


def react(amounts: dict[str, float], reactions: list[Any], pieces: list[tuple[float, float, float]],
          p_o2: float) -> tuple[dict[str, float], float, dict[str, float], dict[str, float]]:
    """Integrate the reactions (Rxn and Decomposition) over the program: final amounts (mol), the growth
    integral (h), the mol of each phase that is fresh oxide, and the gases exchanged (mol, > 0 released)."""
    n = dict(amounts)
    for r in reactions:
        for k in r.solid_products:
            n.setdefault(k, 0.0)
    fresh, gases = dict.fromkeys(n, 0.0), {}
    growth = 0.0
    for duration, t0, t1 in pieces:
        steps = max(1, math.ceil(abs(t1 - t0) / 10.0)) if t1 != t0 else 40
        dt = duration / steps
        for i in range(steps):
            T = t0 + (t1 - t0) * (i + 0.5) / steps
            growth += dt * math.exp(-Q_GROWTH / lib.R_KJ * (1 / T - 1 / T_GROWTH))
            l_fresh = fresh_size(growth)
            extents = []
            for r in reactions:
                rate = r.rate(T, p_o2)
                left = min(n[k] / v for k, v in r.solid_reactants.items())
                if rate > 0 and left > 0 and not r.fresh:  # finer reactants react faster (Jander)
                    sizes = [size(n[k], fresh[k], l_fresh) for k in r.solid_reactants]
                    rate *= (L_PRECURSOR_NM * len(sizes) / sum(sizes)) ** 2
                extents.append(left * -math.expm1(-rate * dt) if rate > 0 and left > 0 else 0.0)
            for k in sorted({k for r in reactions for k in r.solid_reactants}):
                demand = sum(x * r.solid_reactants.get(k, 0.0) for x, r in zip(extents, reactions))
                if demand > n[k] > 0:
                    extents = [x * n[k] / demand if k in r.solid_reactants else x for x, r in zip(extents, reactions)]
            for x, r in zip(extents, reactions):
                if x <= 0:
                    continue
                for k, v in r.solid_reactants.items():
                    left = max(0.0, n[k] - v * x)
                    fresh[k] = fresh[k] * left / n[k] if n[k] > 0 else 0.0
                    n[k] = left
                for k, v in r.solid_products.items():
                    n[k] += v * x
                    fresh[k] += v * x if r.fresh else 0.0
                for k, v in r.gases.items():
                    gases[k] = gases.get(k, 0.0) + v * x
    return n, growth, fresh, gases
