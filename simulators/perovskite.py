"""Perovskite world `perovskite`: ABX3 compositions relaxed with CHGNet (noiseless truth).

Inputs. A composition is element -> amount, any normalization:
  * a full formula (the CLI: SrTiO3, Sr0.5Ba0.5TiO3, KNbO3, LaAlO3, CsPbI3): the anion X is the one of
    O, S, Se, F, Cl, Br, I present, the amounts are scaled to X = 3, and the cations are split into an
    A and a B site holding one formula unit each;
  * cations only (a campaign's composition simplex): when `b_site` (option or setting, an element or a
    formula such as "Ti0.5Zr0.5") is absent from the composition, the composition is the A site,
    scaled to 1 (`a_site` likewise makes it the B site); otherwise the cations are scaled to 2 and
    split. The anion is `anion` (default "O").
  Settings (non-element campaign inputs, `--set` on the CLI) `a_site`, `b_site` and `anion` override
  the options per sample, e.g. a categorical parameter `b_site` with choices [Ti, Zr] (not `B`: a
  campaign input named by an element symbol, boron here, is read as a composition amount).
  The split and the oxidation states are chosen together: among the splits that fill both sites and
  the states that make the simulated formula neutral (pymatgen `oxi_state_guesses`, ICSD states
  first, then every known state), the one with the largest A-minus-B Shannon radius.

Structures. A pure compound is the 5-atom cubic Pm-3m cell. A mixed site uses an ordered n×n×n
supercell (option `supercell`, default 2: 40 atoms): each site's fractions are rounded to multiples of
1/n³ (largest remainder) and the species fill the sites in a fixed order, even-parity sites first (a
50:50 site is rock-salt ordered). `simulated` in the result is the formula actually relaxed. CHGNet
relaxes atoms and cell from the ideal positions: the pure cell keeps its cubic symmetry (no octahedral
tilts: the cubic phase), a supercell may distort. lattice_a = (volume per formula unit)^(1/3).

Outputs. lattice_a (Å), energy_per_atom (eV/atom, CHGNet's MP-compatible scale), reaction_energy
(eV/atom; negative = stable against the binaries), tolerance_factor (Goldschmidt), octahedral_factor
(rB/rX). reaction_energy = [E(ABX3) - Σ n_c E(binary of cation c)] / 5 per formula unit; each cation's
binary follows its charge (A2+B4+: AO + BO2; A3+B3+: ½A2O3 + ½B2O3; A1+B5+: ½A2O + ½B2O5; halides
A1+B2+: AX + BX2), built in the simple prototypes of `PROTOTYPES`, relaxed, the lowest energy kept.
Approximation: where a binary's true ground state is not among them (monoclinic ZrO2, Nb2O5/Ta2O5,
whose stand-in is an O-deficient ReO3 cell, ...) its energy is too high and reaction_energy too negative.
All outputs describe the simulated (rounded) composition. The tolerance factor uses Shannon ionic
radii: A at CN XII, B and X at VI, high spin where spin matters, the nearest tabulated CN when one is
missing (see `notes`).

Cache. Results are JSON files in `cache_dir` (default $ATHANOR_CACHE or ~/.cache/athanor), keyed by the
simulated sites, supercell, fmax, steps and the CHGNet version; binaries are cached on their own, so a
repeated composition, or a new one sharing binaries, costs no CHGNet call for them.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from athanor import chemistry
from athanor.errors import AthanorError
from athanor.simulators import chgnet_cache
from athanor.simulators.base import ComputedWorld, SimulatedConditions

SCHEMA = 1
ANIONS = {"O": -2, "S": -2, "Se": -2, "F": -1, "Cl": -1, "Br": -1, "I": -1}
SETTINGS = ("a_site", "b_site", "anion")
PROTOTYPES = {  # (cations, anions) per formula -> prototypes tried for that binary (no CdI2-type oxides)
    (1, 1): ("rocksalt", "CsCl"), (1, 2): ("rutile", "fluorite", "CdI2"), (2, 1): ("antifluorite",),
    (2, 3): ("corundum", "La2O3"), (1, 3): ("ReO3",), (2, 5): ("ReO3-vacancy-a", "ReO3-vacancy-b"),
}
def shannon_radius(el: str, charge: int, cn: int) -> tuple[float, str | None]:
    """Shannon ionic radius (Å) at coordination `cn`, else at the nearest tabulated one (with a note)."""
    found = chemistry.shannon_radius(el, charge, cn)
    if found is None:
        raise AthanorError(f"no Shannon radius for {el}{charge:+d}; the tolerance factor cannot be computed")
    radius, key, number = found
    return radius, None if number == cn else f"{el}{charge:+d}: no CN {cn} radius, used CN {key}"


def _formula(site: dict[str, float]) -> str:
    return "".join(el if abs(x - 1) < 1e-9 else f"{el}{x:.4g}" for el, x in site.items())


def _parse_site(value: Any, what: str) -> dict[str, float]:
    from pymatgen.core import Composition

    try:
        comp = Composition(str(value))
    except (ValueError, KeyError):
        comp = None
    if comp is None or not comp.num_atoms > 0:
        raise AthanorError(f"{what} {value!r}: not an element or formula (e.g. 'Ti' or 'Ti0.5Zr0.5')")
    return {str(el): n / comp.num_atoms for el, n in comp.get_el_amt_dict().items()}


def _round(site: dict[str, float], slots: int) -> dict[str, int]:
    """Largest-remainder rounding of a site's fractions to counts out of `slots`."""
    total = sum(site.values())
    raw = {el: x / total * slots for el, x in site.items()}
    counts = {el: int(math.floor(r)) for el, r in raw.items()}
    for el in sorted(raw, key=lambda e: (counts[e] - raw[e], e))[: slots - sum(counts.values())]:
        counts[el] += 1
    return {el: n for el, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n}


@lru_cache(maxsize=512)
def _guesses(formula: str) -> tuple[tuple[tuple[str, float], ...], ...]:
    from pymatgen.core import Composition

    comp = Composition(formula)
    found = comp.oxi_state_guesses() or comp.oxi_state_guesses(all_oxi_states=True)
    return tuple(tuple(sorted(g.items())) for g in found)


def resolve(composition: dict[str, float], a_site: str | None, b_site: str | None, anion: str,
            slots: int) -> dict[str, Any]:
    """The sites, counts and oxidation states to simulate; AthanorError for a non-perovskite."""
    from itertools import combinations

    comp = {el: float(x) for el, x in composition.items() if float(x) > 1e-9}
    if not comp and a_site and b_site:  # the sites given as settings alone (categorical inputs)
        comp = {**_parse_site(a_site, "a_site"), **_parse_site(b_site, "b_site")}
    if any(not math.isfinite(x) for x in comp.values()) or not comp:
        raise AthanorError(f"composition {composition!r}: no positive finite amounts")
    present = [el for el in comp if el in ANIONS]
    if len(present) > 1:
        raise AthanorError(f"mixed anions {'+'.join(present)} are not supported; give one of {', '.join(ANIONS)}")
    x = present[0] if present else anion
    if x not in ANIONS:
        raise AthanorError(f"anion {x!r} is not supported; give one of {', '.join(ANIONS)}")
    cations = {el: n for el, n in comp.items() if el != x}
    fixed_a = _parse_site(a_site, "a_site") if a_site else None
    fixed_b = _parse_site(b_site, "b_site") if b_site else None
    if not present and fixed_b and not set(fixed_b) & set(cations):
        total = sum(cations.values())
        splits = [({el: n / total for el, n in cations.items()}, fixed_b)]
    elif not present and fixed_a and not set(fixed_a) & set(cations):
        total = sum(cations.values())
        splits = [(fixed_a, {el: n / total for el, n in cations.items()})]
    else:
        scale = 3.0 / comp[x] if present else 2.0 / sum(cations.values())
        amounts = {el: n * scale for el, n in cations.items()}
        splits = []
        names = sorted(amounts)
        for k in range(1, len(names)):
            for group in combinations(names, k):
                a = {el: amounts[el] for el in group}
                b = {el: amounts[el] for el in names if el not in group}
                if abs(sum(a.values()) - 1) < 0.02 and abs(sum(b.values()) - 1) < 0.02:
                    if (fixed_a and not set(fixed_a) <= set(a)) or (fixed_b and not set(fixed_b) <= set(b)):
                        continue
                    splits.append(({e: v / sum(a.values()) for e, v in a.items()},
                                   {e: v / sum(b.values()) for e, v in b.items()}))
    if not splits:
        given = _formula({el: round(n, 4) for el, n in comp.items()})
        fixed = "".join(f", {w} {v}" for w, v in (("a_site", a_site), ("b_site", b_site)) if v)
        raise AthanorError(f"{given} is not an ABX3 perovskite: its cations cannot fill an A and a B site "
                           f"of one formula unit each (with X = {x}3{fixed})")
    best, neutral_found = None, False
    for a, b in splits:
        ca, cb = _round(a, slots), _round(b, slots)
        formula = "".join(f"{el}{n}" for el, n in {**ca, **cb}.items()) + f"{x}{3 * slots}"
        for guess in _guesses(formula):
            states = dict(guess)
            if states.get(x) != ANIONS[x] or any(states[el] <= 0 or states[el] != int(states[el])
                                                 for el in [*ca, *cb]):
                continue
            neutral_found = True
            ox = {el: int(states[el]) for el in [*ca, *cb]}
            try:
                ra = sum(n * shannon_radius(el, ox[el], 12)[0] for el, n in ca.items()) / slots
                rb = sum(n * shannon_radius(el, ox[el], 6)[0] for el, n in cb.items()) / slots
            except AthanorError:
                continue  # an ion without a Shannon radius: try the next assignment
            if best is None or ra - rb > best[0]:
                best = (ra - rb, ca, cb, ox)
            break  # the most probable neutral assignment of this split
    if best is None:
        name = f"{_formula(splits[0][0])}{_formula(splits[0][1])}{x}3"
        if neutral_found:
            raise AthanorError(f"{name}: no Shannon radii for the oxidation states that make it neutral")
        raise AthanorError(f"{name}: charge neutrality is impossible with known oxidation states "
                           f"(A and B charges must sum to {-3 * ANIONS[x]})")
    _, ca, cb, ox = best
    return {"A": {el: n / slots for el, n in ca.items()}, "B": {el: n / slots for el, n in cb.items()}, "X": x,
            "counts_A": ca, "counts_B": cb, "oxidation_states": ox}


def descriptors(site: dict[str, Any]) -> dict[str, Any]:
    """Goldschmidt tolerance and octahedral factors from site-averaged Shannon radii."""
    ox, x, notes = site["oxidation_states"], site["X"], []

    def mean_radius(fractions: dict[str, float], cn: int) -> float:
        total = 0.0
        for el, f in fractions.items():
            r, note = shannon_radius(el, ox[el], cn)
            total += f * r
            if note:
                notes.append(note)
        return total

    ra, rb = mean_radius(site["A"], 12), mean_radius(site["B"], 6)
    rx, note = shannon_radius(x, ANIONS[x], 6)
    notes += [note] if note else []
    return {"tolerance_factor": (ra + rx) / (math.sqrt(2) * (rb + rx)), "octahedral_factor": rb / rx,
            "radii": {"A": round(ra, 4), "B": round(rb, 4), "X": rx}, "notes": notes}


def perovskite_structure(counts_a: dict[str, int], counts_b: dict[str, int], x: str, n: int, a0: float) -> Any:
    """The ordered n×n×n supercell of the cubic cell (n = 1: the 5-atom Pm-3m cell)."""
    from pymatgen.core import Lattice, Structure

    cells = sorted(((i, j, k) for i in range(n) for j in range(n) for k in range(n)),
                   key=lambda c: ((c[0] + c[1] + c[2]) % 2, c))
    a_species = [el for el, m in counts_a.items() for _ in range(m)]
    b_species = [el for el, m in counts_b.items() for _ in range(m)]
    species, coords = [], []
    for index, (i, j, k) in enumerate(cells):
        for el, shift in ((a_species[index], (0, 0, 0)), (b_species[index], (.5, .5, .5)),
                          (x, (.5, .5, 0)), (x, (.5, 0, .5)), (x, (0, .5, .5))):
            species.append(el)
            coords.append([(i + shift[0]) / n, (j + shift[1]) / n, (k + shift[2]) / n])
    return Structure(Lattice.cubic(n * a0), species, coords)


def binary_structures(m: str, x: str, nm: int, nx: int, d: float) -> dict[str, Any]:
    """The binary M_nm X_nx in each prototype of PROTOTYPES, scaled to an M–X distance d (Å)."""
    from pymatgen.core import Lattice, Structure

    sg, r3 = Structure.from_spacegroup, math.sqrt(3)
    build = {
        "rocksalt": lambda: sg("Fm-3m", Lattice.cubic(2 * d), [m, x], [[0, 0, 0], [.5, .5, .5]]),
        "CsCl": lambda: Structure(Lattice.cubic(2 * d / r3), [m, x], [[0, 0, 0], [.5, .5, .5]]),
        "rutile": lambda: sg("P4_2/mnm", Lattice.tetragonal(2.29 * d, 1.48 * d), [m, x],
                             [[0, 0, 0], [.305, .305, 0]]),
        "fluorite": lambda: sg("Fm-3m", Lattice.cubic(4 * d / r3), [m, x], [[0, 0, 0], [.25, .25, .25]]),
        "CdI2": lambda: sg("P-3m1", Lattice.hexagonal(1.42 * d, 2.29 * d), [m, x], [[0, 0, 0], [1 / 3, 2 / 3, .25]]),
        "antifluorite": lambda: sg("Fm-3m", Lattice.cubic(4 * d / r3), [x, m], [[0, 0, 0], [.25, .25, .25]]),
        "corundum": lambda: sg("R-3c", Lattice.hexagonal(2.49 * d, 6.80 * d), [m, x], [[0, 0, .352], [.306, 0, .25]]),
        "La2O3": lambda: sg("P-3m1", Lattice.hexagonal(1.61 * d, 2.50 * d), [m, x, x],
                            [[1 / 3, 2 / 3, .245], [0, 0, 0], [1 / 3, 2 / 3, .645]]),
        "ReO3": lambda: Structure(Lattice.cubic(2 * d), [m, x, x, x], [[0, 0, 0], [.5, 0, 0], [0, .5, 0], [0, 0, .5]]),
        # M2X5 stand-ins: a 2x1x1 ReO3 cell less one X, bridging along a (both M five-fold) or along b.
        "ReO3-vacancy-a": lambda: Structure(Lattice.orthorhombic(4 * d, 2 * d, 2 * d), [m, m] + [x] * 5,
                                            [[0, 0, 0], [.5, 0, 0], [.75, 0, 0], [0, .5, 0], [.5, .5, 0],
                                             [0, 0, .5], [.5, 0, .5]]),
        "ReO3-vacancy-b": lambda: Structure(Lattice.orthorhombic(4 * d, 2 * d, 2 * d), [m, m] + [x] * 5,
                                            [[0, 0, 0], [.5, 0, 0], [.25, 0, 0], [.75, 0, 0], [.5, .5, 0],
                                             [0, 0, .5], [.5, 0, .5]]),
    }
    return {name: build[name]().get_primitive_structure() for name in prototypes(nm, nx, x)}


def prototypes(nm: int, nx: int, x: str) -> tuple[str, ...]:
    return tuple(p for p in PROTOTYPES.get((nm, nx), ()) if not (x == "O" and p == "CdI2"))


class PerovskiteWorld(ComputedWorld):
    """ABX3 perovskites: CHGNet lattice parameter, energy and stability; Shannon tolerance factor."""

    name = "perovskite"
    settings = SETTINGS
    properties = ("lattice_a", "energy_per_atom", "reaction_energy", "tolerance_factor", "octahedral_factor")

    def __init__(self, b_site: str | None = None, a_site: str | None = None, anion: str = "O",
                 supercell: int = 2, fmax: float = 0.02, steps: int = 300, cache_dir: str | None = None,
                 outputs: list[str] | None = None, conditions: SimulatedConditions | None = None):
        super().__init__(outputs, conditions)
        if anion not in ANIONS:
            raise AthanorError(f"world.options.anion: {anion!r} is not supported; give one of {', '.join(ANIONS)}")
        for what, value in (("a_site", a_site), ("b_site", b_site)):
            if value is not None:
                _parse_site(value, f"world.options.{what}")
        if not (isinstance(supercell, int) and 1 <= supercell <= 4):
            raise AthanorError(f"world.options.supercell: {supercell!r} must be an integer from 1 to 4")
        if not (fmax > 0 and isinstance(steps, int) and steps >= 1):
            raise AthanorError("world.options: fmax must be > 0 and steps a positive integer")
        self.a_site, self.b_site, self.anion = a_site, b_site, anion
        self.supercell, self.fmax, self.steps = supercell, float(fmax), steps
        self.cache = chgnet_cache.DiskCache(cache_dir, "perovskite")

    @classmethod
    def from_campaign(cls, spec: Any) -> ComputedWorld:
        from athanor.chemistry import is_element

        unknown = [n for n in spec.space.input_names if not is_element(n) and n not in SETTINGS]
        if unknown:
            raise AthanorError(f"world 'perovskite': input(s) {', '.join(map(repr, unknown))} are neither elements "
                               f"nor settings it reads ({', '.join(SETTINGS)})")
        return super().from_campaign(spec)

    def evaluate(self, composition: dict[str, float], settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise AthanorError(f"perovskite world: unknown setting(s) {', '.join(map(repr, unknown))}; "
                               f"known: {', '.join(SETTINGS)}")
        chosen = {"a_site": self.a_site, "b_site": self.b_site, "anion": self.anion}
        chosen.update({k: str(v) for k, v in settings.items()})
        site = resolve(composition, chosen["a_site"], chosen["b_site"], chosen["anion"], self.supercell ** 3)
        n = 1 if len(site["counts_A"]) == 1 and len(site["counts_B"]) == 1 else self.supercell
        key = {"world": self.name, "schema": SCHEMA, "A": site["counts_A"], "B": site["counts_B"], "X": site["X"],
               "oxidation_states": site["oxidation_states"], "supercell": n, "fmax": self.fmax,
               "steps": self.steps, "chgnet": chgnet_cache.chgnet_version()}
        computed = self.cache.get_or_compute(key, lambda: self._compute(site, n))
        found = descriptors(site)
        result = {"lattice_a": computed["lattice_a"], "energy_per_atom": computed["energy_per_atom"],
                  "reaction_energy": computed["reaction_energy"],
                  "tolerance_factor": found["tolerance_factor"], "octahedral_factor": found["octahedral_factor"],
                  "simulated": f"{_formula(site['A'])}{_formula(site['B'])}{site['X']}3",
                  "sites": {"A": site["A"], "B": site["B"], "X": site["X"]},
                  "oxidation_states": site["oxidation_states"], "radii": found["radii"],
                  "binaries": computed["binaries"], "cell": computed["cell"]}
        if found["notes"]:
            result["notes"] = sorted(set(found["notes"]))
        return result

    def _relax(self, structure: Any) -> dict[str, Any]:
        return chgnet_cache.relax(structure, fmax=self.fmax, steps=self.steps)

    def _compute(self, site: dict[str, Any], n: int) -> dict[str, Any]:
        ox, x = site["oxidation_states"], site["X"]
        rx = shannon_radius(x, ANIONS[x], 6)[0]
        ra = sum(f * shannon_radius(el, ox[el], 12)[0] for el, f in site["A"].items())
        rb = sum(f * shannon_radius(el, ox[el], 6)[0] for el, f in site["B"].items())
        a0 = (2 * (rb + rx) + math.sqrt(2) * (ra + rx)) / 2
        slots = n ** 3
        counts_a = {el: c * slots // self.supercell ** 3 for el, c in site["counts_A"].items()}
        counts_b = {el: c * slots // self.supercell ** 3 for el, c in site["counts_B"].items()}
        relaxed = self._relax(perovskite_structure(counts_a, counts_b, x, n, a0))
        structure = relaxed["structure"]
        e_fu = relaxed["energy_per_atom"] * len(structure) / slots
        binaries, e_ref = {}, 0.0
        for el, count in {**counts_a, **counts_b}.items():
            entry = self._binary(el, ox[el], x)
            binaries[entry["formula"]] = {k: entry[k] for k in ("prototype", "energy_per_atom", "prototypes")}
            e_ref += count / slots * entry["energy_per_cation"]
        return {"lattice_a": (structure.volume / slots) ** (1 / 3), "energy_per_atom": relaxed["energy_per_atom"],
                "reaction_energy": (e_fu - e_ref) / 5, "binaries": binaries,
                "cell": {"atoms": len(structure), "supercell": n, "relax_steps": relaxed["steps"],
                         "abc": [round(v, 4) for v in structure.lattice.abc],
                         "angles": [round(v, 3) for v in structure.lattice.angles]}}

    def reference_energy(self, element: str, charge: int, anion: str) -> float:
        """eV per cation of the element's lowest-energy binary with the anion at that charge (cached)."""
        return float(self._binary(element, charge, anion)["energy_per_cation"])

    def _binary(self, el: str, charge: int, x: str) -> dict[str, Any]:
        """The lowest-energy prototype of the binary of cation el^charge with the anion x (cached)."""
        z = -ANIONS[x]
        g = math.gcd(charge, z)
        nm, nx = z // g, charge // g
        formula = f"{el}{nm if nm > 1 else ''}{x}{nx if nx > 1 else ''}"
        if not prototypes(nm, nx, x):
            raise AthanorError(f"{el}{charge:+d} with {x}: no prototype for the binary {formula}")
        key = {"binary": formula, "schema": SCHEMA, "prototypes": prototypes(nm, nx, x), "fmax": self.fmax,
               "steps": self.steps, "chgnet": chgnet_cache.chgnet_version()}

        def compute() -> dict[str, Any]:
            d = shannon_radius(el, charge, 6)[0] + shannon_radius(x, ANIONS[x], 6)[0]
            energies = {name: self._relax(s)["energy_per_atom"]
                        for name, s in binary_structures(el, x, nm, nx, d).items()}
            best = min(energies, key=energies.get)
            return {"formula": formula, "prototype": best, "energy_per_atom": energies[best],
                    "energy_per_cation": energies[best] * (nm + nx) / nm, "prototypes": energies}

        return self.cache.get_or_compute(key, compute)
