"""Quantitative phase identification from a powder pattern: whole-pattern fitting of reference profiles.

`identify_phases(two_theta, intensity, candidates)` fits the measured pattern (Cu Kα, counts) as

    y(2θ) = Σ_i s_i · P_i(2θ - z; β_i) + Σ_k b_k · B_k(2θ)

- P_i: the reference profile of candidate phase i per unit volume fraction: its Bragg peaks from its
  crystal structure (pymatgen's `XRDCalculator`, Cu Kα, unscaled integrated intensities |F|²·m·Lp per
  cell, divided by V_cell²) placed as area-normalized pseudo-Voigt peaks. The structures come from the
  lab's reference database, `athanor.simulators.phases` (in a real lab these are ICSD/COD entries);
  other structures can be passed in `references`. Peak lists are computed once per phase and process.
  A phase the database holds as XRD-amorphous (no structure) contributes its tabulated Gaussian halo
  (fixed shape, area per unit volume fraction) instead of peaks.
- Peak width: FWHM² = instrument (Caglioti U tan²θ + V tanθ + W and the pseudo-Voigt mixing η: the
  diffractometer's calibration with a line-profile standard; defaults are the lab instrument's, taken
  from simulators/solid_state.py, overridable per call) + (β_i / cos θ)², the Scherrer size term
  refined per phase (β_i = Kλ/L_i, so the crystallite size L_i comes out as well); a 2θ zero shift z
  shared by all phases is refined too.
  Widths and shift are the only non-linear parameters: a grid search over z and a common β, then
  `scipy.optimize.least_squares` over (z, β_1..β_n), with the linear parameters solved exactly at every
  step (variable projection). A per-phase size matters: a product is often finer than its precursors.
- Background: free (signed) coefficients on 1/2θ and Chebyshev polynomials T0..T3 over the scan, fitted
  jointly; the scale factors s_i ≥ 0 by non-negative least squares (`scipy.optimize.nnls` on the
  problem with the background projected out, which is the exact joint solution).
- Weights: Poisson, 1/max(y, 1) for the search, then 1/max(model, 1), iterated, for the refinement and
  the final solve (weighting by the observed counts biases the fit low where counts are few).

Weight fractions. Phase i contributes (volume fraction φ_i)·Σ|F|²m·Lp/V_i² (Hill & Howard 1987): the
fitted s_i ∝ φ_i directly, because P_i already carries the 1/V_i². Mass fraction = volume fraction ×
density, so W_i = s_i ρ_i / Σ_j s_j ρ_j — the textbook W_i ∝ S_i (ZMV)_i with the unscaled Rietveld
scale factor S_i = s_i / V_i², since ZM/V = ρ·N_A. Microabsorption and preferred orientation are ignored.

Uncertainties: the covariance (JᵀWJ)⁻¹ of the weighted least squares at the solution, J the model's
Jacobian in all its parameters (scale factors, background, zero shift, and the widths of the phases
present, so a broad phase hiding under another's peaks gets the uncertainty it deserves), inflated by
the reduced χ² where it exceeds 1 (for intensities that are not integer counts, whose variance is then
unknown, always scaled by it); propagated to the weight fractions by the delta method
(`PhaseFit.covariance`; sums such as "all precursors" get their variance from `PhaseFit.combined`).

Detection: a phase is reported present when its weight fraction is at least `detection_limit`
(1 %) and its scale factor is significant, s_i / σ(s_i) ≥ `significance` (3).

Fit quality: Rwp, Rexp, reduced χ², and `unexplained`, the share of the above-background signal
(weighted sum of squares) the fit leaves unexplained beyond the counting noise: ≈ 0 for a good fit,
≈ 0.5 when a 10 % phase is missing from the candidates, > 0.9 for the wrong chemical system.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import least_squares, nnls

from athanor.simulators import phases as lib
from athanor.simulators.solid_state import CAGLIOTI, ETA, LAMBDA_A, SCHERRER_K

WAVELENGTH = "CuKa"  # pymatgen's Kα1/Kα2 weighted mean, 1.54184 Å
BACKGROUND_ORDER = 3  # Chebyshev T0..T3, plus 1/2θ
ZERO_SHIFT_MAX = 0.2  # °, the zero-shift search range
BETA_START, BETA_MAX = 0.1, 3.0  # °, Scherrer size term at cos θ = 1 (0.1° ≈ 80 nm; 3° ≈ 2.7 nm)
_PEAK_MARGIN = 5.0  # ° beyond the scan whose peaks' tails still reach it


class PhaseIdError(ValueError):
    """A pattern or candidate list that cannot be analyzed; the message is one line."""


@dataclass(frozen=True)
class Reference:
    """One phase's Bragg peaks: positions (°2θ), integrated intensity per unit volume fraction, density;
    or, for an XRD-amorphous phase, no peaks and a Gaussian halo (center °, FWHM °, area per unit volume
    fraction) whose shape is fixed."""

    name: str
    two_theta: np.ndarray
    intensity: np.ndarray
    density: float  # g/cm³
    halo: tuple[float, float, float] | None = None

    @property
    def amorphous(self) -> bool:
        return self.halo is not None


@dataclass
class PhaseFit:
    """The result of `identify_phases`; fractions and uncertainties are keyed by the candidate as given."""

    phases: list[str]
    weight_fractions: dict[str, float]
    uncertainties: dict[str, float]  # standard uncertainty of each weight fraction
    volume_fractions: dict[str, float]
    significance: dict[str, float]  # s_i / σ(s_i)
    detected: list[str]
    covariance: np.ndarray  # of the weight fractions, in the order of `phases`
    rwp: float
    rexp: float
    chi2: float  # reduced χ² = (Rwp/Rexp)²
    zero_shift: float  # °
    crystallite_nm: dict[str, float | None]  # from the refined Scherrer term; None if not detected / unresolved
    unexplained: float  # share of the above-background signal power the fit leaves unexplained beyond noise
    n_points: int
    two_theta: np.ndarray = field(repr=False)
    calculated: np.ndarray = field(repr=False)
    background: np.ndarray = field(repr=False)

    @property
    def gof(self) -> float:
        return math.sqrt(self.chi2)

    def combined(self, names: Sequence[str]) -> tuple[float, float]:
        """Sum of the weight fractions of `names` (those among the candidates) and its standard uncertainty."""
        chosen = set(names)
        g = np.array([1.0 if p in chosen else 0.0 for p in self.phases])
        return float(g @ np.array([self.weight_fractions[p] for p in self.phases])), \
            float(math.sqrt(max(0.0, g @ self.covariance @ g)))

    def summary(self) -> dict[str, Any]:
        return {"weight_fractions": self.weight_fractions, "uncertainties": self.uncertainties,
                "detected": self.detected, "rwp": self.rwp, "rexp": self.rexp, "chi2": self.chi2,
                "zero_shift": self.zero_shift, "crystallite_nm": self.crystallite_nm,
                "unexplained": self.unexplained}


# --- the reference database ---------------------------------------------------------------------------

def _peaks_of(structure: Any, name: str, two_theta_range: tuple[float, float]) -> Reference:
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    pat = XRDCalculator(wavelength=WAVELENGTH).get_pattern(structure, scaled=False, two_theta_range=two_theta_range)
    return Reference(name, np.asarray(pat.x, float), np.asarray(pat.y, float) / structure.volume ** 2,
                     float(structure.density))


@lru_cache(maxsize=None)
def library_reference(name: str, two_theta_range: tuple[float, float]) -> Reference:
    """Peaks of a phase of the reference database (cached per phase and range: the slow part); the
    database's halo for a phase it holds as XRD-amorphous (no structure)."""
    is_amorphous = getattr(lib, "is_amorphous", None)
    if is_amorphous is not None and is_amorphous(name):
        pk = lib.reference_peaks(name, two_theta_range)
        h = pk["halo"]
        return Reference(name, np.zeros(0), np.zeros(0), float(pk["density"]),
                         (float(h["center"]), float(h["fwhm"]), float(h["area"])))
    return _peaks_of(lib.structure(name), name, two_theta_range)


def _reference(candidate: str, given: Mapping[str, Any] | None, rng: tuple[float, float]) -> Reference:
    if given and candidate in given:
        ref = given[candidate]
        if isinstance(ref, Reference):
            return ref
        if isinstance(ref, Mapping):
            halo = ref.get("halo")
            if isinstance(halo, Mapping):
                halo = (halo["center"], halo["fwhm"], halo["area"])
            return Reference(candidate, np.asarray(ref.get("two_theta", ()), float),
                             np.asarray(ref.get("intensity", ()), float), float(ref["density"]),
                             tuple(float(v) for v in halo) if halo is not None else None)
        return _peaks_of(ref, candidate, rng)  # a pymatgen Structure
    name = lib.lookup(candidate)
    if name is None or name in lib.GASES:
        raise PhaseIdError(f"unknown phase {candidate!r}: not in the reference database "
                           f"(known: {', '.join(lib.SOLIDS)})")
    return library_reference(name, rng)


# --- the model ----------------------------------------------------------------------------------------

def _pseudo_voigt(tt: np.ndarray, centers: np.ndarray, fwhm: np.ndarray, eta: float) -> np.ndarray:
    dx = (tt[None, :] - centers[:, None]) / fwhm[:, None]
    gauss = math.sqrt(4 * math.log(2) / math.pi) * np.exp(-4 * math.log(2) * dx * dx)
    lorentz = (2 / math.pi) / (1 + 4 * dx * dx)
    return (eta * lorentz + (1 - eta) * gauss) / fwhm[:, None]


class _Model:
    def __init__(self, tt: np.ndarray, y: np.ndarray, refs: list[Reference], caglioti: tuple[float, float, float],
                 eta: float):
        self.tt, self.y, self.refs, self.eta = tt, y, refs, eta
        self.halos = [r.halo for r in refs]
        self._profiles: dict[tuple[int, float, float], np.ndarray] = {}
        u, v, w = caglioti
        self.instrument = []  # per phase: (positions, intensities, instrument FWHM², 1/cos²θ)
        for r in refs:
            tan = np.tan(np.radians(r.two_theta / 2))
            self.instrument.append((r.two_theta, r.intensity, np.maximum(u * tan ** 2 + v * tan + w, 1e-4),
                                    1 / np.cos(np.radians(r.two_theta / 2)) ** 2))
        x = 2 * (tt - tt[0]) / max(tt[-1] - tt[0], 1e-9) - 1
        cheb = np.polynomial.chebyshev.chebvander(x, BACKGROUND_ORDER)
        self.basis_bg = np.column_stack([cheb, tt[0] / tt])
        self.set_weights(1.0 / np.maximum(y, 1.0))

    def set_weights(self, w: np.ndarray) -> None:
        self.sw = np.sqrt(w)
        self.bw = self.basis_bg * self.sw[:, None]
        self.q, self.r = np.linalg.qr(self.bw)
        self.yw = self.y * self.sw

    def profile(self, i: int, z: float, beta: float) -> np.ndarray:
        """Phase i's profile per unit volume fraction (memoized: a finite-difference step in one phase's
        width leaves the others' profiles as they were)."""
        key = (i, float(z), 0.0 if self.halos[i] is not None else float(beta))
        cached = self._profiles.get(key)
        if cached is None:
            if len(self._profiles) > 64 * len(self.refs):
                self._profiles.clear()
            cached = self._profiles[key] = self._profile(i, z, beta)
        return cached

    def _profile(self, i: int, z: float, beta: float) -> np.ndarray:
        if self.halos[i] is not None:  # an amorphous phase: its halo, shifted with the zero error only
            c, f, area = self.halos[i]
            return area * math.sqrt(4 * math.log(2) / math.pi) / f * np.exp(
                -4 * math.log(2) * ((self.tt - z - c) / f) ** 2)
        x, inten, inst, sec2 = self.instrument[i]
        if not len(x):
            return np.zeros_like(self.tt)
        fwhm = np.sqrt(inst + beta ** 2 * sec2)
        return inten @ _pseudo_voigt(self.tt - z, x, fwhm, self.eta)

    def design(self, theta: np.ndarray) -> np.ndarray:
        z, betas = theta[0], theta[1:]
        return np.column_stack([self.profile(i, z, b) for i, b in enumerate(betas)])

    def solve(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scale factors (≥ 0) and background (free) minimizing the weighted residual; and that residual."""
        aw = a * self.sw[:, None]
        pa = aw - self.q @ (self.q.T @ aw)
        py = self.yw - self.q @ (self.q.T @ self.yw)
        colscale = np.sqrt((pa ** 2).sum(axis=0))
        colscale[colscale == 0] = 1.0
        s, _ = nnls(pa / colscale, py, maxiter=50 * a.shape[1] + 100)
        s = s / colscale
        b = np.linalg.solve(self.r, self.q.T @ (self.yw - aw @ s))
        resid = self.yw - aw @ s - self.bw @ b
        return s, b, resid

    def residual(self, theta: np.ndarray) -> np.ndarray:
        return self.solve(self.design(theta))[2]


# --- the analysis -------------------------------------------------------------------------------------

def _pattern(two_theta: Any, intensity: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        tt = np.asarray(two_theta, dtype=float).ravel()
        y = np.asarray(intensity, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise PhaseIdError(f"pattern is not numeric: {str(exc).splitlines()[0]}") from None
    if tt.size == 0 or y.size == 0:
        raise PhaseIdError("empty pattern")
    if tt.size != y.size:
        raise PhaseIdError(f"pattern arrays differ in length: {tt.size} 2θ values, {y.size} intensities")
    for label, arr in (("2θ", tt), ("intensity", y)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise PhaseIdError(f"non-finite {label} in the pattern ({bad.size} of {arr.size} points, "
                               f"first at index {bad[0]}: {arr[bad[0]]})")
    if tt.size < 50:
        raise PhaseIdError(f"pattern too short to analyze ({tt.size} points; need ≥ 50)")
    order = np.argsort(tt, kind="stable")
    tt, y = tt[order], y[order]
    if tt[0] <= 0 or tt[-1] >= 180 or np.any(np.diff(tt) <= 0):
        raise PhaseIdError("2θ must be distinct angles inside (0, 180)°")
    if np.max(y) <= 0:
        raise PhaseIdError("pattern has no counts")
    return tt, y


def identify_phases(two_theta: Any, intensity: Any, candidates: Sequence[str],
                    references: Mapping[str, Any] | None = None, *, detection_limit: float = 0.01,
                    significance: float = 3.0, caglioti: tuple[float, float, float] = CAGLIOTI,
                    eta: float = ETA, refine_widths: bool = True) -> PhaseFit:
    """Weight fractions of the candidate phases in a Cu Kα powder pattern (see the module docstring).

    `candidates`: formulas or mineral names of the reference database (or keys of `references`, each a
    pymatgen Structure, a `Reference`, or a mapping with two_theta, intensity (per unit volume fraction)
    and density). `caglioti` and `eta`: the instrument's resolution function. Raises `PhaseIdError` with
    a one-line message for an unusable pattern or an unknown phase.
    """
    tt, y = _pattern(two_theta, intensity)
    names = list(dict.fromkeys(str(c) for c in candidates))
    if not names:
        raise PhaseIdError("no candidate phases")
    lo, hi = math.floor(tt[0] - _PEAK_MARGIN), math.ceil(tt[-1] + _PEAK_MARGIN)
    rng = (max(0.0, float(lo)), min(180.0, float(hi)))
    refs = [_reference(c, references, rng) for c in names]
    seen: dict[str, str] = {}
    for c, r in zip(names, refs):
        if r.name in seen and not (references and c in references):
            raise PhaseIdError(f"candidates {seen[r.name]!r} and {c!r} are the same phase")
        seen[r.name] = c
    model = _Model(tt, y, refs, caglioti, eta)
    n = len(names)

    # Non-linear parameters (zero shift, per-phase size broadening): a grid for the shift, then least squares.
    step = max(0.01, float(np.median(np.diff(tt))))
    best = None
    for z in np.arange(-ZERO_SHIFT_MAX, ZERO_SHIFT_MAX + step / 2, step):  # the shift, at a middling width
        theta = np.array([z, *[BETA_START] * n])
        cost = float(np.sum(model.residual(theta) ** 2))
        if best is None or cost < best[0]:
            best = (cost, theta)
    for beta in (0.03, 0.3, 1.0):  # then a common width
        theta = np.array([best[1][0], *[beta] * n])
        cost = float(np.sum(model.residual(theta) ** 2))
        if cost < best[0]:
            best = (cost, theta)
    theta = best[1]

    def reweight(theta: np.ndarray) -> None:  # Poisson variance of the expected counts, iterated
        a = model.design(theta)
        for _ in range(3):
            s, b, _ = model.solve(a)
            model.set_weights(1.0 / np.maximum(a @ s + model.basis_bg @ b, 1.0))

    reweight(theta)
    n_width = 0
    if refine_widths:  # the shift and the widths of the phases present (the others' have no say)
        refined: set[int] = set()
        for _ in range(2):
            present = model.solve(model.design(theta))[0] > 0
            active = [i for i in range(n) if present[i] and not refs[i].amorphous]
            if refined and not set(active) - refined:
                break
            refined |= set(active)
            free = np.array([0, *[1 + i for i in sorted(refined)]])

            def residual(p: np.ndarray, free: np.ndarray = free) -> np.ndarray:
                full = theta.copy()
                full[free] = p
                return model.residual(full)

            lower = np.array([-ZERO_SHIFT_MAX - step, *[0.0] * (len(free) - 1)])
            upper = np.array([ZERO_SHIFT_MAX + step, *[BETA_MAX] * (len(free) - 1)])
            fit = least_squares(residual, theta[free], bounds=(lower, upper),
                                x_scale=np.array([0.01, *[0.02] * (len(free) - 1)]), diff_step=1e-4,
                                xtol=1e-6, ftol=1e-8, max_nfev=60 * len(free))
            theta = theta.copy()
            theta[free] = fit.x
            reweight(theta)
        n_width = len(refined)
    a = model.design(theta)
    s, b, resid = model.solve(a)
    calc_bg = model.basis_bg @ b
    calc = a @ s + calc_bg

    n_par = n + model.basis_bg.shape[1] + (1 + n_width if refine_widths else 0)
    dof = max(1, tt.size - n_par)
    wss = float(resid @ resid)
    w = model.sw ** 2
    wyy = float(np.sum(w * y ** 2))
    chi2 = wss / dof
    rwp, rexp = math.sqrt(wss / wyy), math.sqrt(dof / wyy)
    signal = float(np.sum(w * (y - calc_bg) ** 2))
    # Poisson counts: the misfit beyond the expected χ² of dof; other intensities (noiseless, or scaled):
    # no noise level is known, so all of the residual counts as misfit.
    counts = bool(np.all(y == np.round(y)) and y.min() >= 0)
    unexplained = max(0.0, (wss - dof) if counts else wss) / signal if signal > 0 else 1.0

    # Covariance of the scales from the Jacobian of the model at the solution in all its parameters (scales,
    # background, and the refined shift and widths of the phases present), scaled by the reduced χ²: where it
    # exceeds 1 for counts (misfit), and always for intensities that are not counts (unknown variance).
    cols = [a, model.basis_bg]
    if refine_widths:
        h = 1e-4
        shifted = model.design(theta + np.r_[h, np.zeros(n)]) - model.design(theta - np.r_[h, np.zeros(n)])
        cols.append((shifted @ s / (2 * h))[:, None])
        for i in np.flatnonzero(s > 0):
            if refs[i].amorphous:
                continue
            beta = theta[1 + i]
            lo_b, hi_b = max(0.0, beta - h), beta + h
            d = model.profile(i, theta[0], hi_b) - model.profile(i, theta[0], lo_b)
            cols.append((s[i] * d / (hi_b - lo_b))[:, None])
    x = np.column_stack(cols) * model.sw[:, None]
    colscale = np.sqrt((x ** 2).sum(axis=0))
    colscale[colscale == 0] = 1.0
    xs = x / colscale
    cov_full = np.linalg.pinv(xs.T @ xs, rcond=1e-12) / np.outer(colscale, colscale) * (
        max(1.0, chi2) if counts else chi2)
    cov_s = cov_full[:n, :n]
    sigma_s = np.sqrt(np.clip(np.diag(cov_s), 0.0, None))

    # Scale factors → volume fractions (s_i ∝ φ_i) → weight fractions (× density); delta method.
    rho = np.array([r.density for r in refs])
    mass = s * rho
    total = float(mass.sum())
    if total > 0:
        wf = mass / total
        jac = (np.diag(rho) * total - np.outer(mass, rho)) / total ** 2  # ∂W_i/∂s_j
        cov_w = jac @ cov_s @ jac.T
        vf = s / s.sum()
    else:
        wf, vf = np.zeros(n), np.zeros(n)
        cov_w = np.full((n, n), 0.0)
    sig_w = np.sqrt(np.clip(np.diag(cov_w), 0.0, None))
    z_score = np.where(sigma_s > 0, s / np.where(sigma_s > 0, sigma_s, 1.0), np.where(s > 0, np.inf, 0.0))
    detected = [c for c, f, zs in zip(names, wf, z_score) if f >= detection_limit and zs >= significance]
    sizes: dict[str, float | None] = {}
    for c, beta in zip(names, theta[1:]):
        sizes[c] = None
        if refine_widths and c in detected and beta > 1e-3 and not refs[names.index(c)].amorphous:
            sizes[c] = float(SCHERRER_K * LAMBDA_A / (10 * math.radians(beta)))
    return PhaseFit(
        phases=names, weight_fractions={c: float(v) for c, v in zip(names, wf)},
        uncertainties={c: float(v) for c, v in zip(names, sig_w)},
        volume_fractions={c: float(v) for c, v in zip(names, vf)},
        significance={c: float(min(v, 1e6)) for c, v in zip(names, z_score)}, detected=detected,
        covariance=cov_w, rwp=rwp, rexp=rexp, chi2=chi2, zero_shift=float(theta[0]), crystallite_nm=sizes,
        unexplained=float(unexplained), n_points=int(tt.size), two_theta=tt, calculated=calc, background=calc_bg,
    )
