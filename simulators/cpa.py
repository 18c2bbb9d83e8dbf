"""Coherent-potential approximation (CPA) for substitutional Cr–Mn–Fe–Co–Ni–Cu alloys, in torch.

The Hasegawa–Kanamori treatment of the Slater–Pauling curve (J. Phys. Soc. Jpn. 31, 382 (1971)) on a
model d band, the tight-binding cousin of KKR-CPA (Akai, J. Phys.: Condens. Matter 1, 8045 (1989)):

* d band: the canonical bcc or fcc band of `stoner.canonical_band` (Slater–Koster, r⁻⁵ hoppings),
  smoothed and normalized to unit rms width, scaled by the alloy's width W (the concentration average
  of the species' widths: hopping disorder is left out, level disorder is kept). Five orbitals per spin.
* species: each has its own d level εᵢ and Stoner parameter Iᵢ; its spin-σ level is
  εᵢσ = εᵢ ∓ Iᵢmᵢ/2, with mᵢ its own local moment. Cr and Mn take whatever sign the self-consistency
  gives them; in iron the sign is antiparallel.
* CPA: a coherent potential Σσ(z) per spin and energy, fixed by Σᵢ cᵢ tᵢ = 0 with
  tᵢ = (εᵢσ − Σ)/(1 − (εᵢσ − Σ) G), G(z) = F(z − Σ) the band's Hilbert transform; the species'
  local Green's function is Gᵢ = G/(1 − (εᵢσ − Σ) G). Solved by Newton per energy.
* occupations and band energy: Matsubara sums at electronic temperature T, with a two-pole model of
  each local density of states (the exact first two moments) summed in closed form, so the remainder
  decays as ω⁻⁴ and a few dozen poles suffice. A free-electron sp band (unpolarized) holds the rest.
* self-consistency: the Fermi level μ and every species' moment mᵢ solve R(u, c) = 0 (electron count,
  mᵢ = nᵢ↑ − nᵢ↓) by Newton, from a non-magnetic, a parallel and an antiparallel start; the solution
  of lowest energy is kept. Of bcc and fcc the lower energy wins, with the non-magnetic structural
  energy scaled down as in the rigid-band model (d bands alone overestimate it).
* gradients: by the implicit function theorem at both levels. Per energy, Σ = Σ* − h(Σ*)/h'(Σ*)
  with h' held constant; for the moments, u = u* − J⁻¹R(u*, c) with J = ∂R/∂u held constant. The
  values are the converged ones; the derivatives are −h_c/h' and −J⁻¹R_c, not iterations unrolled.

Species levels, widths and Stoner parameters (`CPAParameters`) are set by hand against the
experimental table data/alloys/moments.csv (see benchmarks/alloy_curve.py and tests/test_cpa.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from athanor.simulators.stoner import ELEMENTS, STRUCTURES, VALENCE, canonical_band

SPINS = torch.tensor([1.0, -1.0], dtype=torch.double)  # majority (lowered), minority (raised)


@dataclass(frozen=True)
class CPAParameters:
    level: dict[str, float] = field(default_factory=lambda: {
        "Cr": 0.90, "Mn": 0.40, "Fe": 0.0, "Co": -0.36, "Ni": -0.70, "Cu": -1.93})  # d level, eV, Fe = 0
    width: dict[str, float] = field(default_factory=lambda: {
        "Cr": 1.42, "Mn": 1.62, "Fe": 1.58, "Co": 1.29, "Ni": 1.28, "Cu": 1.06})  # rms d-band width, eV
    stoner_i: dict[str, float] = field(default_factory=lambda: {
        "Cr": 0.32, "Mn": 0.37, "Fe": 0.77, "Co": 1.07, "Ni": 1.40, "Cu": 0.47})  # eV
    temperature: float = 0.05  # eV: electronic kT, the smoothing of every occupation
    poles: int = 32  # Matsubara frequencies summed
    bins: int = 64  # bins of the model band
    smoothing: float = 0.06  # Gaussian smoothing of the canonical histogram, in units of its rms width
    sp_bottom: float = -8.0  # eV below the alloy's mean d level
    sp_prefactor: float = 0.011  # states per spin per eV^1.5
    structural_scale: float = 0.35
    # bcc − fcc energy each species adds in proportion to its fraction (eV): what d bands alone miss of
    # the elements' observed structures (Ni and Cu close-packed, Cr bcc). Fe's comes from its magnetism.
    structure_bias: dict[str, float] = field(default_factory=lambda: {
        "Cr": -0.30, "Mn": 0.0, "Fe": 0.0, "Co": 0.0, "Ni": 0.20, "Cu": 0.20})


@functools.lru_cache(maxsize=None)
def model_band(structure: str, bins: int, smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """The canonical band, Gaussian-smoothed and rebinned: (energies, weights), zero mean, unit rms."""
    e, w = canonical_band(structure)
    grid = np.linspace(e.min() - 3 * smoothing, e.max() + 3 * smoothing, bins)
    kernel = np.exp(-0.5 * ((grid[:, None] - e[None, :]) / smoothing) ** 2)
    weights = kernel @ w
    weights /= weights.sum()
    mean = weights @ grid
    sd = math.sqrt(weights @ (grid - mean) ** 2)
    return (grid - mean) / sd, weights


def _fermi(x: torch.Tensor, T: float) -> torch.Tensor:
    return torch.sigmoid(-x / T)


class CPAModel:
    """Moments of a batch of compositions c [B, len(ELEMENTS)], double precision."""

    def __init__(self, parameters: CPAParameters | None = None):
        self.p = p = parameters or CPAParameters()
        as_tensor = lambda values: torch.tensor([values[e] for e in ELEMENTS], dtype=torch.double)  # noqa: E731
        self.valence, self.level = as_tensor(VALENCE), as_tensor(p.level)
        self.width, self.stoner = as_tensor(p.width), as_tensor(p.stoner_i)
        self.structure_bias = as_tensor(p.structure_bias)
        bands = [model_band(s, p.bins, p.smoothing) for s in STRUCTURES]
        self.band_e = torch.tensor(np.stack([b[0] for b in bands]), dtype=torch.double)  # [structures, K]
        self.band_w = torch.tensor(np.stack([b[1] for b in bands]), dtype=torch.double)
        self.omega = (2 * torch.arange(p.poles, dtype=torch.double) + 1) * math.pi * p.temperature

    # --- the coherent potential, one energy at a time ---------------------------------------------
    def _cpa_terms(self, sigma, z, eps, c, band_e, band_w, W):
        """Shapes: sigma, z [b, 2, P] complex; eps [b, 2, S]; c [b, S]; band_* [b, K]; W [b].
        Returns G, the species' a = ε − Σ and D = 1 − aG, the CPA residual h and dh/dΣ."""
        d = (z - sigma)[..., None] - (W[:, None] * band_e)[:, None, None, :]
        weights = band_w[:, None, None, :]
        G = (weights / d).sum(-1)
        G_sigma = (weights / d**2).sum(-1)  # dG/dΣ
        a = eps[:, :, None, :] - sigma[..., None]
        D = 1 - a * G[..., None]
        cw = c[:, None, None, :]
        h = (cw * a / D).sum(-1)
        h_sigma = (cw * (a**2 * G_sigma[..., None] - 1) / D**2).sum(-1)
        return G, a, D, h, h_sigma

    @torch.no_grad()
    def _converge_sigma(self, sigma, z, eps, c, band_e, band_w, W, steps: int = 60):
        """The physical root (Im Σ < 0 above the real axis): the cavity iteration, which keeps Σ there,
        then Newton, which is used wherever its step stays there too."""
        cold = sigma is None
        if cold:  # the virtual crystal's level: exact when the species' levels coincide
            sigma = (c[:, None, :] * eps).sum(-1)[..., None].expand_as(z).to(z.dtype) - 1e-3j
        for iteration in range(steps):
            G, a, D, h, h_sigma = self._cpa_terms(sigma, z, eps, c, band_e, band_w, W)
            if float(h.abs().max()) < 1e-13:
                break
            cavity = 1 / G + sigma
            average = (c[:, None, None, :] / (cavity[..., None] - eps[:, :, None, :])).sum(-1)
            fixed_point = cavity - 1 / average
            newton = sigma - h / h_sigma
            use_newton = (newton.imag < 0) & (iteration >= 4 or not cold)
            sigma = torch.where(use_newton, newton, fixed_point)
        return sigma

    # --- the self-consistency residual ------------------------------------------------------------
    def residual(self, u, c, structure, species, sigma0=None):
        """R(u, c) for u = (μ, m over `species`) [b, 1+S']; c [b, S'] over the same species (indices
        into ELEMENTS); `structure` [b] indexes STRUCTURES. Returns R [b, 1+S'], the converged Σ (to
        warm-start the next call) and the energy per atom [b] at u."""
        p, T = self.p, self.p.temperature
        level, width, stoner = self.level[species], self.width[species], self.stoner[species]
        mu, m = u[:, 0], u[:, 1:]
        band_e, band_w = self.band_e[structure], self.band_w[structure]
        W = (c * width).sum(-1)
        eps = level - 0.5 * SPINS[None, :, None] * (stoner * m)[:, None, :]  # [b, 2, S']
        z = (mu[:, None] + 1j * self.omega)[:, None, :].expand(-1, 2, -1)
        sigma_star = self._converge_sigma(sigma0, z.detach(), eps.detach(), c.detach(), band_e, band_w, W.detach())
        *_, h, h_sigma = self._cpa_terms(sigma_star, z, eps, c, band_e, band_w, W)
        sigma = sigma_star - h / h_sigma.detach()  # the implicit function theorem, per energy
        G, a, D, *_ = self._cpa_terms(sigma, z, eps, c, band_e, band_w, W)
        G_local = G[..., None] / D  # [b, 2, P, S']
        # Two poles at εᵢσ ± W carry each local density's first two moments: summed in closed form.
        poles = eps[..., None] + torch.stack([W, -W], -1)[:, None, None, :]  # [b, 2, S', 2]
        occupied = _fermi(poles - mu[:, None, None, None], T)
        zz = z[..., None, None]
        model = 0.5 * (1 / (zz - poles[:, :, None])).sum(-1)  # [b, 2, P, S']
        remainder = G_local - model
        count_rest = 2 * T * remainder.real.sum(2)  # [b, 2, S']
        energy_rest = 2 * T * (1j * self.omega[None, None, :, None] * remainder).real.sum(2)
        n = 5 * (0.5 * occupied.sum(-1) + count_rest)
        band = 5 * (0.5 * (poles * occupied).sum(-1) + mu[:, None, None] * count_rest + energy_rest)
        x = (mu - self._sp_bottom(c, level)).clamp(min=0)
        n_sp = 2 * p.sp_prefactor * x**1.5
        e_sp = 2 * p.sp_prefactor * (mu * x**1.5 - x**2.5 / 2.5)
        electrons = (c * n.sum(1)).sum(-1) + n_sp
        # A species a row lacks has no moment there (its equation pins it at zero): it would only be an
        # impurity's, and a hard one to converge for nothing.
        magnetization = torch.where(c.detach() > 0, n[:, 0] - n[:, 1], torch.zeros_like(m))
        R = torch.cat([(electrons - (c * self.valence[species]).sum(-1))[:, None], m - magnetization], -1)
        energy = (c * (band.sum(1) + stoner * m**2 / 4)).sum(-1) + e_sp
        return R, sigma_star, energy

    def _sp_bottom(self, c, level):
        return (c * level).sum(-1) + self.p.sp_bottom

    @torch.no_grad()
    def initial_fermi_level(self, c, structure, species):
        """The virtual crystal's non-magnetic Fermi level at zero temperature (bisection): a start
        from which Newton does not wander off through the bcc band's central dip."""
        level, width = self.level[species], self.width[species]
        centre, W = (c * level).sum(-1), (c * width).sum(-1)
        band_e, band_w = self.band_e[structure], self.band_w[structure]
        N = (c * self.valence[species]).sum(-1)
        low, high = centre - 4 * W, centre + 4 * W
        for _ in range(50):
            mid = (low + high) / 2
            d = 10 * (band_w * (band_e * W[:, None] + centre[:, None] <= mid[:, None])).sum(-1)
            sp = 2 * self.p.sp_prefactor * (mid - self._sp_bottom(c, level)).clamp(min=0) ** 1.5
            high, low = torch.where(d + sp > N, mid, high), torch.where(d + sp > N, low, mid)
        return (low + high) / 2

    def _jacobian(self, u, c, structure, species, sigma0):
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            R, sigma, energy = self.residual(u, c.detach(), structure, species, sigma0)
            J = torch.stack([torch.autograd.grad(R[:, j].sum(), u, retain_graph=j < R.shape[1] - 1)[0]
                             for j in range(R.shape[1])], 1)
        return R.detach(), J, sigma, energy.detach()

    def solve(self, c, structure, species, u0, steps: int = 30, tol: float = 1e-9):
        """Levenberg–Marquardt on u from u0 ([b, 1+S']), each problem until its own residual is below
        `tol`: Newton's step near a solution, a short gradient step far from one (full Newton steps
        wander off through the bcc band's dip and the moments' oscillatory modes). The Jacobian is
        exact at the start and Broyden-updated after each accepted step; a problem whose step fails
        gets an exact one again. Returns u*, Σ*, the energy and the residual."""
        u = u0.clone()
        R, J, sigma, energy = self._jacobian(u, c, structure, species, None)
        damping = torch.full((u.shape[0],), 1e-3, dtype=torch.double)
        stale = torch.zeros(u.shape[0], dtype=torch.bool)
        eye = torch.eye(u.shape[1], dtype=torch.double)
        todo = torch.arange(u.shape[0])
        for _ in range(steps):
            # A problem stops when solved, or when no damping makes progress (no solution near its start).
            todo = todo[(R[todo].abs().max(-1).values >= tol) & (damping[todo] < 1e4)]
            if len(todo) == 0:
                break
            refresh = todo[stale[todo]]
            if len(refresh):
                R[refresh], J[refresh], sigma[refresh], energy[refresh] = self._jacobian(
                    u[refresh], c[refresh], structure[refresh], species, sigma[refresh])
                stale[refresh] = False
            R_t, J_t = R[todo], J[todo]
            merit = (R_t**2).sum(-1)
            JtJ, JtR = J_t.transpose(1, 2) @ J_t, (J_t.transpose(1, 2) @ R_t[..., None])[..., 0]
            accepted = torch.zeros(len(todo), dtype=torch.bool)
            step, R_new = torch.zeros_like(R_t), R_t.clone()
            sigma_new, energy_new = sigma[todo].clone(), energy[todo].clone()
            for _ in range(6):  # raise the damping of a problem until its step lowers the residual
                lam = damping[todo]
                trial = torch.linalg.solve(JtJ + lam[:, None, None] * (eye + torch.diag_embed(
                    JtJ.diagonal(dim1=1, dim2=2))), JtR)
                trial = trial / trial.abs().max(-1).values.clamp(min=1.0)[:, None]  # at most 1 eV or 1 μB
                with torch.no_grad():
                    R_trial, sigma_trial, energy_trial = self.residual(
                        u[todo] - trial, c[todo], structure[todo], species, sigma[todo])
                better = ((R_trial**2).sum(-1) < merit) & ~accepted
                step = torch.where(better[:, None], trial, step)
                R_new = torch.where(better[:, None], R_trial, R_new)
                sigma_new = torch.where(better[:, None, None], sigma_trial, sigma_new)
                energy_new = torch.where(better, energy_trial, energy_new)
                accepted |= better
                damping[todo] = torch.where(better, lam / 5, torch.where(accepted, lam, lam * 8))
                if bool(accepted.all()):
                    break
            du, dR = -step, R_new - R_t
            broyden = ((dR - (J_t @ du[..., None])[..., 0])[..., None] * du[:, None, :]) \
                / (du**2).sum(-1).clamp(min=1e-300)[:, None, None]
            J[todo] = J_t + torch.where(accepted[:, None, None], broyden, torch.zeros_like(broyden))
            u[todo], R[todo], sigma[todo], energy[todo] = u[todo] + du, R_new, sigma_new, energy_new
            stale[todo] = ~accepted
        return u, sigma, energy, R

    # --- states ---------------------------------------------------------------------------------
    def starts(self, species: torch.Tensor) -> torch.Tensor:
        """[starts, S'] initial moments: non-magnetic; ferromagnetic with Cr and Mn parallel; and with
        them antiparallel (which of the two survives depends on the host)."""
        parallel = torch.tensor([1.0, 2.0, 2.5, 1.7, 0.7, 0.1], dtype=torch.double)[species]
        anti = parallel * torch.tensor([-1.0, -1.0, 1, 1, 1, 1], dtype=torch.double)[species]
        return torch.stack([torch.zeros_like(parallel), parallel, anti])

    def state(self, c: torch.Tensor, structure: str | None = None) -> dict[str, torch.Tensor | list[str]]:
        """For c [B, len(ELEMENTS)] (rows normalized here): "moment" [B] (μB/atom), "moments" [B, S]
        (per species, differentiable in c; NaN for a species the row lacks), "structure" (list),
        "fermi_level" [B], "converged" [B], and "energy_difference" [B] (bcc − fcc, eV/atom) unless
        the structure was forced."""
        c = torch.as_tensor(c, dtype=torch.double)
        c = c / c.sum(-1, keepdim=True)
        species = torch.nonzero((c.detach() > 0).any(0)).flatten()
        cs = c[:, species]
        B = c.shape[0]
        structures = [STRUCTURES.index(structure)] if structure else list(range(len(STRUCTURES)))
        starts = self.starts(species)
        # Every (composition, structure, start) is one problem of the batch.
        grid = torch.cartesian_prod(torch.arange(B), torch.tensor(structures), torch.arange(len(starts)))
        rows, struct, start = grid[:, 0], grid[:, 1], grid[:, 2]
        cc = cs.detach()[rows]
        u0 = torch.cat([self.initial_fermi_level(cc, struct, species)[:, None], starts[start]], -1)
        u, sigma, energy, R = self.solve(cc, struct, species, u0)
        converged = R.abs().max(-1).values < 1e-6
        energy = torch.where(converged, energy, torch.inf).reshape(B, len(structures), len(starts))
        best_start = energy.argmin(-1)  # [B, structures]
        best = energy.gather(-1, best_start[..., None])[..., 0]
        total = best - (1 - self.p.structural_scale) * energy[..., 0]
        bias = (cs.detach() * self.structure_bias[species]).sum(-1)  # on bcc
        total = total + bias[:, None] * torch.tensor([s == 0 for s in structures], dtype=torch.double)
        chosen_structure = total.argmin(-1)  # [B]
        flat = (torch.arange(B) * len(structures) + chosen_structure) * len(starts) \
            + best_start.gather(-1, chosen_structure[:, None])[:, 0]
        # Implicit function theorem: value u* (plus one Newton correction), derivative −J⁻¹ ∂R/∂c.
        _, J, sigma_star, _ = self._jacobian(u[flat], cs.detach(), struct[flat], species, sigma[flat])
        R_star, *_ = self.residual(u[flat], cs, struct[flat], species, sigma_star)
        u_final = u[flat] - torch.linalg.solve(J, R_star)
        moments = torch.full((B, len(ELEMENTS)), float("nan"), dtype=torch.double).index_put((
            torch.arange(B)[:, None], species[None, :]), torch.where(cs.detach() > 0, u_final[:, 1:], float("nan")))
        out = {"moment": (cs * u_final[:, 1:]).sum(-1), "moments": moments, "fermi_level": u_final[:, 0],
               "structure": [STRUCTURES[structures[int(i)]] for i in chosen_structure], "converged": converged[flat]}
        if len(structures) > 1:
            out["energy_difference"] = (total[:, 0] - total[:, 1]).detach()
        return out
