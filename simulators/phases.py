"""The phase library of the `solid_state` world: crystal structures and thermodynamics, each with its source.

Structures are built with pymatgen's `Structure.from_spacegroup` from literature lattice parameters and
Wyckoff positions (spinels in origin choice 2, rhombohedral groups in the hexagonal setting). Peak
positions depend only on the lattice parameters; the atomic coordinates set the intensities.

Thermodynamics: `G(T) = H - T*S` (kJ/mol) with H = ΔfH°298 and S = S°298 for the binary oxides and O2
(ΔCp = 0, the Ulich approximation), or, for a phase made from others, `G = Σ ν·G(parent) + (A + B*T)`,
where A + B*T is a measured Gibbs energy of that formation reaction (a linear fit from the source,
valid over roughly 900–1800 K, i.e. where the furnace works). Reaction energies between library phases
then use measured reaction data wherever a source has it, and the binaries' absolute values cancel.

Decomposing precursors (carbonates, hydroxides: structures from the sources named; nitrate hydrates:
no structure, XRD-amorphous, a diffuse halo) carry no thermodynamics here: decomposition.py models
them with a tabulated decomposition temperature instead.

Kinetics (per phase that can form): `Ea` (kJ/mol) and the half-conversion time `t_half_h` of an
isothermal hold at `T_ref_C` with full driving force. These are rough calibrations to common laboratory
practice (MgAl2O4 from the oxides needs ~1300–1600 °C; ZnFe2O4 forms at ~800–1100 °C; hematite loses
oxygen to magnetite within hours where pO2 allows), not fits to data.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

R_KJ = 8.314462618e-3  # kJ/(mol K)
WAVELENGTH = "CuKa"  # pymatgen's weighted Cu Kα1/Kα2 average, 1.54184 Å
LAMBDA_A = 1.54184
CAGLIOTI = (0.0045, -0.0020, 0.0040)  # the diffractometer's U, V, W in deg²
ETA, SCHERRER_K = 0.5, 0.9  # pseudo-Voigt mixing; Scherrer constant

PHASES: dict[str, dict[str, Any]] = {
    "MgO": {
        "mineral": "periclase", "spacegroup": "Fm-3m", "lattice": {"a": 4.2112},
        "sites": [("Mg", (0, 0, 0)), ("O", (0.5, 0.5, 0.5))],
        "structure_source": "rock salt, Mg 4a, O 4b; a = 4.2112 Å (ICDD PDF 45-0946; "
                            "Hazen 1976, Am. Mineral. 61, 266)",
        "thermo": {"H": -601.60, "S": 26.95},
        "thermo_source": "CODATA key values (Cox, Wagman & Medvedev 1989)",
    },
    "Al2O3": {
        "mineral": "corundum", "spacegroup": "R-3c", "lattice": {"a": 4.7602, "c": 12.9933},
        "sites": [("Al", (0, 0, 0.35216)), ("O", (0.30624, 0, 0.25))],
        "structure_source": "Lewis, Schwarzenbach & Flack 1982, Acta Cryst. A38, 733 (Al 12c, O 18e)",
        "thermo": {"H": -1675.7, "S": 50.92},
        "thermo_source": "CODATA key values (Cox, Wagman & Medvedev 1989)",
    },
    "MgAl2O4": {
        "mineral": "spinel", "spacegroup": "Fd-3m:2", "lattice": {"a": 8.0831},
        "sites": [({"Mg": 0.85, "Al": 0.15}, (0.125, 0.125, 0.125)),
                  ({"Al": 0.925, "Mg": 0.075}, (0.5, 0.5, 0.5)),
                  ("O", (0.2630, 0.2630, 0.2630))],
        "structure_source": "a = 8.0831 Å for synthetic MgAl2O4 (ICDD PDF 21-1152); oxygen u and the cation "
                            "distribution (inversion 0.15) from Nestola et al. 2007, Am. Mineral. 92, 1838 "
                            "(AMCSD 0004465)",
        "thermo": {"from": {"MgO": 1, "Al2O3": 1}, "A": -23.600, "B": -0.00591},
        "thermo_source": "Jacob, Jayadevan & Mallya 1998, J. Am. Ceram. Soc. 81, 209: "
                         "ΔG°(MgO + Al2O3 → MgAl2O4) = -23600 - 5.91 T J/mol (emf, 900–1250 K)",
        "precursors": ["MgO", "Al2O3"],
        "kinetics": {"Ea": 450.0, "T_ref_C": 1250.0, "t_half_h": 4.0},
    },
    "ZnO": {
        "mineral": "zincite", "spacegroup": "P6_3mc", "lattice": {"a": 3.2498, "c": 5.2066},
        "sites": [("Zn", (1 / 3, 2 / 3, 0)), ("O", (1 / 3, 2 / 3, 0.3820))],
        "structure_source": "wurtzite, Zn and O on 2b; a, c from ICDD PDF 36-1451; u = 0.382 "
                            "(Kisi & Elcombe 1989, Acta Cryst. C45, 1867)",
        "thermo": {"H": -350.46, "S": 43.65},
        "thermo_source": "CODATA key values (Cox, Wagman & Medvedev 1989)",
    },
    "Fe2O3": {
        "mineral": "hematite", "spacegroup": "R-3c", "lattice": {"a": 5.0356, "c": 13.7489},
        "sites": [("Fe", (0, 0, 0.3553)), ("O", (0.3059, 0, 0.25))],
        "structure_source": "a, c from ICDD PDF 33-0664; Fe 12c z and O 18e x from Blake et al. 1966, "
                            "Am. Mineral. 51, 123",
        "thermo": {"H": -826.2, "S": 87.4},
        "thermo_source": "Robie & Hemingway 1995, USGS Bulletin 2131",
    },
    "ZnFe2O4": {
        "mineral": "franklinite", "spacegroup": "Fd-3m:2", "lattice": {"a": 8.4411},
        "sites": [("Zn", (0.125, 0.125, 0.125)), ("Fe", (0.5, 0.5, 0.5)), ("O", (0.2600, 0.2600, 0.2600))],
        "structure_source": "normal spinel (Zn 8a, Fe 16d); a = 8.4411 Å (ICDD PDF 22-1012); "
                            "oxygen u = 0.260, typical of refinements (e.g. O'Neill 1992, Eur. J. Mineral. 4, 571)",
        "thermo": {"from": {"ZnO": 1, "Fe2O3": 1}, "A": -29.3, "B": 0.0},
        "thermo_source": "ΔH from the oxides -7.0 kcal/mol (Reznitskii & Khomyakov 1960, Dokl. Akad. Nauk SSSR, "
                         "acid-solution calorimetry); ΔS from the oxides taken as 0 (normal spinel, an assumption)",
        "precursors": ["ZnO", "Fe2O3"],
        "kinetics": {"Ea": 250.0, "T_ref_C": 850.0, "t_half_h": 2.0},
    },
    "Fe3O4": {
        "mineral": "magnetite", "spacegroup": "Fd-3m:2", "lattice": {"a": 8.3965},
        "sites": [("Fe", (0.125, 0.125, 0.125)), ("Fe", (0.5, 0.5, 0.5)), ("O", (0.2549, 0.2549, 0.2549))],
        "structure_source": "Haavik et al. 2000, Am. Mineral. 85, 514 (AMCSD 0002400)",
        "thermo": {"from": {"Fe2O3": 1.5, "O2": -0.25}, "A": 514.690 / 4, "B": -0.29753 / 4},
        "thermo_source": "Hemingway 1990, Am. Mineral. 75, 781: ΔG°(6 Fe2O3 → 4 Fe3O4 + O2) = "
                         "514.690 - 0.29753 T kJ (high-temperature fit: hematite → magnetite at ≈1385 °C in air, "
                         "observed ≈1390 °C)",
        "precursors": ["Fe2O3"],
        # Also a side reaction: leftover hematite loses oxygen where pO2 and T allow (in N2 above ≈1040 °C).
        "side_from": ["Fe2O3"],
        "kinetics": {"Ea": 200.0, "T_ref_C": 1200.0, "t_half_h": 1.0},
    },
    "O2": {"gas": True, "thermo": {"H": 0.0, "S": 205.152}, "thermo_source": "CODATA key values"},
    # --- decomposing precursors (decomposition.py: what they turn into, and at what temperature) -------
    "MgCO3": {
        "mineral": "magnesite", "spacegroup": "R-3c", "lattice": {"a": 4.6338, "c": 15.0192},
        "sites": [("Mg", (0, 0, 0)), ("C", (0, 0, 0.25)), ("O", (0.2790, 0, 0.25))],
        "structure_source": "Bromiley et al. 2007, Am. Mineral. 92, 829 (synthetic MgCO3; AMCSD 0004331)",
    },
    "Mg(OH)2": {
        "mineral": "brucite", "spacegroup": "P-3m1", "lattice": {"a": 3.14979, "c": 4.7702},
        "sites": [("Mg", (0, 0, 0)), ("O", (1 / 3, 2 / 3, 0.2203)), ("H", (1 / 3, 2 / 3, 0.4130))],
        "structure_source": "Catti et al. 1995, Phys. Chem. Miner. 22, 200 (neutron, 0.0001 GPa; AMCSD 0007912)",
    },
    "Al(OH)3": {
        "mineral": "gibbsite", "spacegroup": "P12_1/n1",
        "lattice": {"a": 8.684, "b": 5.078, "c": 9.736, "beta": 94.54},
        "sites": [("Al", (0.1679, 0.5295, -0.0023)), ("Al", (0.3344, 0.0236, -0.0024)),
                  ("O", (0.1779, 0.2183, -0.1115)), ("O", (0.6692, 0.6558, -0.1023)),
                  ("O", (0.4984, 0.1315, -0.1044)), ("O", (-0.0205, 0.6293, -0.1068)),
                  ("O", (0.2971, 0.7178, -0.1052)), ("O", (0.8194, 0.1491, -0.1015)),
                  ("H", (0.1010, 0.1520, -0.1240)), ("H", (0.5950, 0.5730, -0.0980)),
                  ("H", (0.5030, 0.1370, -0.1900)), ("H", (-0.0290, 0.8010, -0.1070)),
                  ("H", (0.2930, 0.7240, -0.1960)), ("H", (0.8150, 0.1600, -0.1900))],
        "structure_source": "Saalfeld & Wedde 1974, Z. Kristallogr. 139, 129 (P2_1/n, Z = 8)",
    },
    "ZnCO3": {
        "mineral": "smithsonite", "spacegroup": "R-3c", "lattice": {"a": 4.6526, "c": 15.0257},
        "sites": [("Zn", (0, 0, 0)), ("C", (0, 0, 0.25)), ("O", (0.2764, 0, 0.25))],
        "structure_source": "Effenberger, Mereiter & Zemann 1981, Z. Kristallogr. 156, 233",
    },
    # The nitrate hydrates melt in their own water of crystallization (36.4 and 47.2 °C) as soon as the
    # furnace runs, and what is left of them is taken as XRD-amorphous: a diffuse halo (see `halo`).
    "Zn(NO3)2·6H2O": {
        "amorphous": {"center_deg": 28.0, "fwhm_deg": 12.0, "area_as": "ZnO"}, "density": 2.065,
        "structure_source": "none: treated as XRD-amorphous (a simplification); density 2.065 g/cm³ "
                            "(CRC Handbook of Chemistry and Physics)",
    },
    "Fe(NO3)3·9H2O": {
        "amorphous": {"center_deg": 28.0, "fwhm_deg": 12.0, "area_as": "Fe2O3"}, "density": 1.68,
        "structure_source": "none: treated as XRD-amorphous (a simplification); density 1.68 g/cm³ "
                            "(CRC Handbook of Chemistry and Physics)",
    },
}

GASES = tuple(name for name, p in PHASES.items() if p.get("gas"))
SOLIDS = tuple(name for name, p in PHASES.items() if not p.get("gas"))


_SIMPLE = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")


def parse(formula: str) -> dict[str, float]:
    """Element amounts of a formula ("MgAl2O4" → {Mg: 1, Al: 2, O: 4}; hydrates as "Zn(NO3)2·6H2O")."""
    text = formula.replace(" ", "")
    if "·" in text or "*" in text:  # a hydrate or adduct: add up its parts, each with its leading count
        out = {}
        for part in re.split(r"[·*]", text):
            count = re.match(r"\d*\.?\d*", part).group()
            for el, n in parse(part[len(count):]).items():
                out[el] = out.get(el, 0.0) + n * (float(count) if count else 1.0)
        return out
    if text and _SIMPLE.sub("", text) == "":
        out: dict[str, float] = {}
        for el, n in _SIMPLE.findall(text):
            out[el] = out.get(el, 0.0) + (float(n) if n else 1.0)
        return out
    from pymatgen.core import Composition  # parentheses, hydrates, ...

    return {str(e): float(n) for e, n in Composition(formula).get_el_amt_dict().items()}


def _key(amounts: dict[str, float]) -> tuple[tuple[str, float], ...]:
    total = sum(amounts.values())
    return tuple(sorted((el, round(n / total, 6)) for el, n in amounts.items() if n > 0))


@lru_cache(maxsize=1)
def _aliases() -> dict[Any, str]:
    names: dict[Any, str] = {name.lower(): name for name in PHASES}
    names.update({p["mineral"].lower(): name for name, p in PHASES.items() if "mineral" in p})
    names.update({_key(parse(name)): name for name in PHASES})
    return names


def lookup(formula: str) -> str | None:
    """The library's name for a formula or mineral name (any normalization of the formula), or None."""
    if not isinstance(formula, str) or not formula.strip():
        return None
    names = _aliases()
    found = names.get(formula.strip().lower())
    if found:
        return found
    try:
        return names.get(_key(parse(formula)))
    except Exception:  # noqa: BLE001 -- pymatgen raises several kinds for a bad formula
        return None


def gibbs(name: str, T: float) -> float:
    """Apparent Gibbs energy G(T) of one mole of the phase at 1 bar, kJ/mol (see the module docstring)."""
    thermo = PHASES[name]["thermo"]
    if "from" in thermo:
        return sum(nu * gibbs(parent, T) for parent, nu in thermo["from"].items()) + thermo["A"] + thermo["B"] * T
    return thermo["H"] - T * thermo["S"] / 1000.0


def is_amorphous(name: str) -> bool:
    """True for a phase the library treats as XRD-amorphous (no structure; a diffuse halo only)."""
    return "amorphous" in PHASES.get(name, {})


@lru_cache(maxsize=None)
def structure(name: str) -> Any:
    import warnings

    from pymatgen.core import Lattice, Structure

    p = PHASES[name]
    if "sites" not in p:
        raise ValueError(f"{name} has no crystal structure in the library"
                         f"{' (it is treated as XRD-amorphous)' if is_amorphous(name) else ''}")
    lat = p["lattice"]
    if "b" in lat:  # monoclinic, unique axis b
        lattice = Lattice.from_parameters(lat["a"], lat["b"], lat["c"], 90, lat["beta"], 90)
    elif "c" in lat:
        lattice = Lattice.hexagonal(lat["a"], lat["c"])
    else:
        lattice = Lattice.cubic(lat["a"])
    species = [s for s, _ in p["sites"]]
    coords = [c for _, c in p["sites"]]
    with warnings.catch_warnings():  # "falling back to short Hermann-Mauguin symbol" for P12_1/n1
        warnings.simplefilter("ignore")
        return Structure.from_spacegroup(p["spacegroup"], lattice, species, coords)


@lru_cache(maxsize=None)
def reference_peaks(name: str, two_theta_range: tuple[float, float] = (5.0, 90.0)) -> dict[str, Any]:
    """Cu Kα peaks of a phase (pymatgen's XRDCalculator; computed once per phase and process).

    `intensity` is pymatgen's unscaled integrated intensity (|F|²·multiplicity·Lorentz-polarization per
    cell) divided by V_cell², so that `volume fraction × intensity` is the phase's contribution to a
    mixture's pattern (the Rietveld scale-factor relation of Hill & Howard 1987; microabsorption ignored).
    """
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    if is_amorphous(name):
        return halo(name, two_theta_range)
    s = structure(name)
    pat = XRDCalculator(wavelength=WAVELENGTH).get_pattern(s, scaled=False, two_theta_range=two_theta_range)
    hkl = ["".join(str(i) for i in h[0]["hkl"]) for h in pat.hkls]
    return {"two_theta": np.asarray(pat.x, float), "intensity": np.asarray(pat.y, float) / s.volume ** 2,
            "hkl": hkl, "density": float(s.density)}


def halo(name: str, two_theta_range: tuple[float, float] = (5.0, 90.0)) -> dict[str, Any]:
    """An XRD-amorphous phase: no Bragg peaks, a Gaussian halo (`center_deg`, `fwhm_deg`) whose area
    per unit volume fraction equals the summed peak intensity of the crystalline phase named by
    `area_as` (its oxide; an assumption: a glass scatters about as much as its crystal, spread out)."""
    p = PHASES[name]["amorphous"]
    area = float(reference_peaks(p["area_as"], two_theta_range)["intensity"].sum())
    return {"two_theta": np.zeros(0), "intensity": np.zeros(0), "hkl": [], "density": PHASES[name]["density"],
            "halo": {"center": p["center_deg"], "fwhm": p["fwhm_deg"], "area": area}}


def profile(name: str, two_theta: np.ndarray, size_nm: float,
            two_theta_range: tuple[float, float] = (5.0, 90.0)) -> np.ndarray:
    """The phase's powder profile per unit volume fraction on a 2θ grid: pseudo-Voigt peaks (η = ETA)
    with FWHM² = Caglioti instrument term + Scherrer size term (K = SCHERRER_K); an amorphous phase's halo."""
    pk = reference_peaks(name, two_theta_range)
    if "halo" in pk:
        c, f, area = pk["halo"]["center"], pk["halo"]["fwhm"], pk["halo"]["area"]
        return area * np.sqrt(4 * np.log(2) / np.pi) / f * np.exp(-4 * np.log(2) * ((two_theta - c) / f) ** 2)
    x, y = pk["two_theta"], pk["intensity"]
    if not len(x):
        return np.zeros_like(two_theta)
    u, v, w = CAGLIOTI
    tan = np.tan(np.radians(x / 2))
    size_deg = np.degrees(SCHERRER_K * LAMBDA_A / (10 * size_nm * np.cos(np.radians(x / 2))))
    h = np.sqrt(np.maximum(u * tan ** 2 + v * tan + w, 1e-4) + size_deg ** 2)[:, None]
    dx = two_theta[None, :] - x[:, None]
    gauss = np.sqrt(4 * np.log(2) / np.pi) / h * np.exp(-4 * np.log(2) * (dx / h) ** 2)
    lorentz = (2 / (np.pi * h)) / (1 + 4 * (dx / h) ** 2)
    return y @ (ETA * lorentz + (1 - ETA) * gauss)


def molar_mass(name: str) -> float:
    from pymatgen.core import Element

    return float(sum(Element(el).atomic_mass * n for el, n in parse(name).items()))
