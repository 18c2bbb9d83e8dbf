"""A rigid-band Stoner model of 3d transition-metal alloys, in torch, differentiable in composition.

The physics, in the order the code follows it:

* d band: canonical tight binding — Slater–Koster two-centre d–d hoppings with
  ddσ : ddπ : ddδ = −6 : 4 : −1 falling off as r⁻⁵ (Andersen's canonical bands), first and second
  neighbours, for bcc and fcc. The eigenvalues on a k-grid are histogrammed once, centred and scaled
  to unit rms width; a band of rms width W (eV) is that histogram times W, each bin broadened into a
  Gaussian of width σ (the smearing a disordered alloy's band has), so N(E) is smooth and its
  derivatives exist everywhere. 5 states per spin.
* sp band: free-electron, unpolarized, N_sp(E) = A (E − E_b)^{3/2} states per spin.
* virtual crystal: an alloy is one band filled with the average electron count
  N = Σ cᵢ zᵢ (z = 6 … 11 for Cr … Cu), with W and the Stoner parameter I averaged likewise.
* Stoner: the spin bands split rigidly by Δ = I·m, where m = n↑ − n↓ (d electrons, μB per atom);
  E_F follows from the electron count. Every stable self-consistent solution (including m = 0) is
  found by scanning Δ, and the one of lowest energy is kept; of bcc and fcc, the lower energy wins.
* Gradients: the solution u* = (E_F, Δ) of F(u, c) = 0 is found without autograd; the moment is
  then evaluated at u = u* − J⁻¹F(u*, c) with J = ∂F/∂u at u* held constant. Its value is u*, and
  its derivative is −J⁻¹ ∂F/∂c: the implicit function theorem, not the iterations unrolled.

Parameters (`StonerParameters`) are set once, by hand, so the model reproduces the Slater–Pauling
curve of the experiments in data/alloys/moments.csv (see tests/test_world_alloy.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

ELEMENTS = ("Cr", "Mn", "Fe", "Co", "Ni", "Cu")
VALENCE = {"Cr": 6.0, "Mn": 7.0, "Fe": 8.0, "Co": 9.0, "Ni": 10.0, "Cu": 11.0}  # 4s + 3d electrons
STRUCTURES = ("bcc", "fcc")
_S3 = math.sqrt(3.0)


def slater_koster_dd(l: np.ndarray, m: np.ndarray, n: np.ndarray, s: float, p: float, d: float) -> np.ndarray:
    """Two-centre d–d hopping blocks (xy, yz, zx, x²−y², 3z²−r²) for bonds with direction cosines l, m, n."""
    l2, m2, n2 = l * l, m * m, n * n
    E = np.zeros(np.broadcast(l, m, n).shape + (5, 5))

    def diagonal(l2: np.ndarray, m2: np.ndarray, n2: np.ndarray) -> np.ndarray:
        return 3 * l2 * m2 * s + (l2 + m2 - 4 * l2 * m2) * p + (n2 + l2 * m2) * d

    def t2g_pair(l: np.ndarray, m: np.ndarray, n: np.ndarray) -> np.ndarray:  # ⟨xy|yz⟩, cyclic for the others
        return 3 * l * m * m * n * s + l * n * (1 - 4 * m * m) * p + l * n * (m * m - 1) * d

    E[..., 0, 0], E[..., 1, 1], E[..., 2, 2] = diagonal(l2, m2, n2), diagonal(m2, n2, l2), diagonal(n2, l2, m2)
    E[..., 0, 1], E[..., 1, 2], E[..., 0, 2] = t2g_pair(l, m, n), t2g_pair(m, n, l), t2g_pair(n, l, m)
    E[..., 0, 3] = 1.5 * l * m * (l2 - m2) * s + 2 * l * m * (m2 - l2) * p + 0.5 * l * m * (l2 - m2) * d
    E[..., 1, 3] = 1.5 * m * n * (l2 - m2) * s - m * n * (1 + 2 * (l2 - m2)) * p + m * n * (1 + (l2 - m2) / 2) * d
    E[..., 2, 3] = 1.5 * n * l * (l2 - m2) * s + n * l * (1 - 2 * (l2 - m2)) * p - n * l * (1 - (l2 - m2) / 2) * d
    sigma_z = n2 - (l2 + m2) / 2
    E[..., 0, 4] = _S3 * l * m * sigma_z * s - 2 * _S3 * l * m * n2 * p + _S3 / 2 * l * m * (1 + n2) * d
    E[..., 1, 4] = _S3 * m * n * sigma_z * s + _S3 * m * n * (l2 + m2 - n2) * p - _S3 / 2 * m * n * (l2 + m2) * d
    E[..., 2, 4] = _S3 * l * n * sigma_z * s + _S3 * l * n * (l2 + m2 - n2) * p - _S3 / 2 * l * n * (l2 + m2) * d
    E[..., 3, 3] = 0.75 * (l2 - m2) ** 2 * s + (l2 + m2 - (l2 - m2) ** 2) * p + (n2 + (l2 - m2) ** 2 / 4) * d
    E[..., 4, 4] = sigma_z**2 * s + 3 * n2 * (l2 + m2) * p + 0.75 * (l2 + m2) ** 2 * d
    E[..., 3, 4] = _S3 / 2 * (l2 - m2) * sigma_z * s + _S3 * n2 * (m2 - l2) * p + _S3 / 4 * (1 + n2) * (l2 - m2) * d
    upper = np.triu_indices(5, 1)
    E[..., upper[1], upper[0]] = E[..., upper[0], upper[1]]
    return E


def _neighbours(structure: str) -> np.ndarray:
    """First and second neighbour vectors, in units of the cubic lattice constant."""
    second = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    if structure == "bcc":
        first = np.array([[x, y, z] for x in (-.5, .5) for y in (-.5, .5) for z in (-.5, .5)])
    elif structure == "fcc":
        first = np.array([v for a in (-.5, .5) for b in (-.5, .5) for v in ([a, b, 0], [a, 0, b], [0, a, b])])
    else:
        raise ValueError(f"unknown structure {structure!r}; known: {', '.join(STRUCTURES)}")
    return np.concatenate([first, second])


@functools.lru_cache(maxsize=None)
def canonical_band(structure: str, nk: int = 24, bins: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """The canonical d band as (energies, weights): unit rms width, zero mean, weights summing to 1."""
    R = _neighbours(structure)
    distance = np.linalg.norm(R, axis=1)
    hoppings = slater_koster_dd(*(R / distance[:, None]).T, -6.0, 4.0, -1.0) * (distance / distance.min())[:, None, None] ** -5
    # A uniform grid over the cube of side 4π/a spans whole periods of both reciprocal lattices.
    axis = (np.arange(nk) + 0.5) / nk * 4 * np.pi
    k = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    H = np.einsum("kr,rij->kij", np.cos(k @ R.T), hoppings)
    eigenvalues = np.linalg.eigvalsh(H).ravel()
    eigenvalues = (eigenvalues - eigenvalues.mean()) / eigenvalues.std()
    counts, edges = np.histogram(eigenvalues, bins=bins)
    return 0.5 * (edges[1:] + edges[:-1]), counts / counts.sum()


@dataclass(frozen=True)
class StonerParameters:
    width: dict[str, float] = field(default_factory=lambda: {
        "Cr": 1.70, "Mn": 1.60, "Fe": 1.65, "Co": 1.30, "Ni": 1.15, "Cu": 1.00})  # rms d-band width, eV
    stoner_i: dict[str, float] = field(default_factory=lambda: {
        "Cr": 0.75, "Mn": 0.75, "Fe": 0.82, "Co": 0.90, "Ni": 1.00, "Cu": 0.90})  # Stoner I, eV
    smearing: float = 0.12  # eV, Gaussian width of each band bin
    sp_bottom: float = -8.0  # eV, below the d-band centre
    sp_prefactor: float = 0.011  # states per spin per eV^1.5
    # The canonical d-band structural energy (bcc − fcc, non-magnetic) enters scaled by this factor:
    # d bands alone overestimate it (sp–d hybridization, the missing hcp competitor), while the
    # magnetic energy that makes Fe bcc is kept whole.
    structural_scale: float = 0.35


class StonerModel:
    """m(c) for a composition vector c over `ELEMENTS`, in double precision."""

    def __init__(self, parameters: StonerParameters | None = None):
        self.p = parameters or StonerParameters()
        self.valence = torch.tensor([VALENCE[e] for e in ELEMENTS], dtype=torch.double)
        self.widths = torch.tensor([self.p.width[e] for e in ELEMENTS], dtype=torch.double)
        self.stoner = torch.tensor([self.p.stoner_i[e] for e in ELEMENTS], dtype=torch.double)
        self.bands = {s: tuple(torch.as_tensor(a, dtype=torch.double) for a in canonical_band(s)) for s in STRUCTURES}

    # --- band filling -------------------------------------------------------------------------------
    def _d_count(self, E: torch.Tensor, structure: str, W: torch.Tensor) -> torch.Tensor:
        """d electrons per spin below E (E may carry leading batch dimensions)."""
        e, w = self.bands[structure]
        z = (E.unsqueeze(-1) - W.unsqueeze(-1) * e) / self.p.smearing
        return 5.0 * (w * torch.special.ndtr(z)).sum(-1)

    def _d_energy(self, E: torch.Tensor, structure: str, W: torch.Tensor) -> torch.Tensor:
        e, w = self.bands[structure]
        centre = W.unsqueeze(-1) * e
        z = (E.unsqueeze(-1) - centre) / self.p.smearing
        density = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        return 5.0 * (w * (centre * torch.special.ndtr(z) - self.p.smearing * density)).sum(-1)

    def _sp_count(self, E: torch.Tensor) -> torch.Tensor:
        return self.p.sp_prefactor * (E - self.p.sp_bottom).clamp(min=0) ** 1.5

    def _sp_energy(self, E: torch.Tensor) -> torch.Tensor:
        x = (E - self.p.sp_bottom).clamp(min=0)
        return self.p.sp_prefactor * (E * x**1.5 - x**2.5 / 2.5)

    def _averages(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = c / c.sum(-1, keepdim=True)
        return (x * self.valence).sum(-1), (x * self.widths).sum(-1), (x * self.stoner).sum(-1)

    def counts(self, E_F: torch.Tensor, delta: torch.Tensor, structure: str, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(electrons, moment) with the majority band lowered and the minority raised by Δ/2."""
        up = self._d_count(E_F + delta / 2, structure, W)
        down = self._d_count(E_F - delta / 2, structure, W)
        return up + down + 2 * self._sp_count(E_F), up - down

    def residual(self, u: torch.Tensor, c: torch.Tensor, structure: str) -> torch.Tensor:
        N, W, I = self._averages(c)
        electrons, moment = self.counts(u[..., 0], u[..., 1], structure, W)
        return torch.stack([electrons - N, u[..., 1] - I * moment], -1)

    def energy(self, u: torch.Tensor, c: torch.Tensor, structure: str) -> torch.Tensor:
        """Band energy of the split bands plus the Stoner double-counting term I m²/4 (eV per atom)."""
        _, W, I = self._averages(c)
        E_F, delta = u[..., 0], u[..., 1]
        # A band lowered by Δ/2 has its eigenvalues lowered by Δ/2 and its count taken at E_F + Δ/2.
        up = self._d_energy(E_F + delta / 2, structure, W) - delta / 2 * self._d_count(E_F + delta / 2, structure, W)
        down = self._d_energy(E_F - delta / 2, structure, W) + delta / 2 * self._d_count(E_F - delta / 2, structure, W)
        moment = delta / I
        return up + down + 2 * self._sp_energy(E_F) + I * moment**2 / 4

    # --- the self-consistent solution -------------------------------------------------------------
    @torch.no_grad()
    def _fermi_level(self, delta: torch.Tensor, N: torch.Tensor, W: torch.Tensor, structure: str) -> torch.Tensor:
        low, high = torch.full_like(delta, -12.0), torch.full_like(delta, 40.0)
        for _ in range(40):  # bisection (Newton polishes after): the electron count rises monotonically with E_F
            mid = (low + high) / 2
            too_many = self.counts(mid, delta, structure, W)[0] > N
            high, low = torch.where(too_many, mid, high), torch.where(too_many, low, mid)
        return (low + high) / 2

    @torch.no_grad()
    def solve(self, c: torch.Tensor, structure: str, points: int = 80) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The lowest-energy self-consistent solution u* = (E_F, Δ), its energy, and the energy of the
        non-magnetic solution, for one composition."""
        N, W, I = self._averages(c)
        grid = torch.linspace(0.0, float(I) * 5.2, points, dtype=torch.double)

        def stoner_gap(delta: torch.Tensor) -> torch.Tensor:  # I·m(Δ) − Δ, with E_F following Δ
            E_F = self._fermi_level(delta, N.expand_as(delta), W.expand_as(delta), structure)
            return I * self.counts(E_F, delta, structure, W)[1] - delta

        gap = stoner_gap(grid)
        roots = [torch.zeros((), dtype=torch.double)]  # m = 0 always solves; stable or not, it competes
        for i in torch.nonzero((gap[:-1] > 0) & (gap[1:] <= 0)).flatten().tolist():
            # Linear interpolation in the bracket, polished by Newton on (E_F, Δ) below.
            roots.append(grid[i] + (grid[i + 1] - grid[i]) * gap[i] / (gap[i] - gap[i + 1]))
        deltas = torch.stack(roots)
        E_F = self._fermi_level(deltas, N.expand_as(deltas), W.expand_as(deltas), structure)
        u = torch.stack([self._newton(torch.stack([f, d]), c, structure) for f, d in zip(E_F, deltas)])
        energies = self.energy(u, c.expand(len(deltas), -1), structure)
        best = int(torch.argmin(energies))
        return u[best], energies[best], energies[0]

    def _newton(self, u: torch.Tensor, c: torch.Tensor, structure: str, steps: int = 20) -> torch.Tensor:
        for _ in range(steps):
            F = self.residual(u, c, structure)
            if float(F.abs().max()) < 1e-13:
                break
            J = torch.autograd.functional.jacobian(lambda v: self.residual(v, c, structure), u)
            u = u - torch.linalg.solve(J, F)
        return u

    def state(self, c: torch.Tensor, structure: str | None = None) -> dict[str, torch.Tensor | str]:
        """Moment (μB/atom, differentiable in c), exchange splitting, Fermi level and structure."""
        c = torch.as_tensor(c, dtype=torch.double)
        candidates = [structure] if structure else list(STRUCTURES)
        solutions = {s: self.solve(c.detach(), s) for s in candidates}
        # Magnetic energy gain in full, plus the scaled non-magnetic structural energy.
        total = {s: float(e - (1 - self.p.structural_scale) * e_nm) for s, (_, e, e_nm) in solutions.items()}
        chosen = min(candidates, key=total.__getitem__)
        u_star = solutions[chosen][0]
        J = torch.autograd.functional.jacobian(lambda u: self.residual(u, c.detach(), chosen), u_star)
        u = u_star - torch.linalg.solve(J, self.residual(u_star, c, chosen))
        _, W, I = self._averages(c)
        moment = self.counts(u[0], u[1], chosen, W)[1]
        out: dict[str, torch.Tensor | str] = {"moment": moment, "fermi_level": u[0], "exchange_splitting": u[1],
                                               "structure": chosen, "electrons": self._averages(c)[0]}
        if len(candidates) > 1:
            out["energy_difference"] = torch.tensor(total["bcc"] - total["fcc"], dtype=torch.double)
        return out
