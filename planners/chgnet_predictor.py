"""CHGNet as a differentiable property predictor for SMOACS-style crystal design.

A candidate is a periodic template whose sites hold *distributions* over elements (the gradient
designer's masked softmaxes) and whose pseudo-cubic lattice parameter a is continuous. CHGNet sees
each atom as the distribution-weighted mixture of its element embeddings, as SMOACS feeds mixed atom
features to its networks; its per-element reference energy (AtomRef) is mixed the same way. Energy
per atom is then differentiable in the distributions and in a.

Templates (`TEMPLATES`, lattice and positions in units of a):
* `perovskite` — the 5-atom cubic ABX3 cell (roles A, B, X);
* `double_perovskite` — the 10-atom rock-salt ordered A2BB'X6 cell (Fm-3m; roles A, B, B2, X).
Atoms stay at their ideal positions (no tilts): the world relaxes them, this predictor does not.

Graphs. Under isotropic scaling every bond length is a·f with f fixed, and bond directions and
angles do not change, so the neighbour lists of a template are constant between the lattice values
where some a·f crosses CHGNet's atom-graph (5 Å) or bond-graph (3 Å) cutoff. Each such interval
gets its graph once, built by CHGNet's own converter; a batch is grouped by interval, and a candidate
whose a moves past a boundary is evaluated on the next interval's graph. CHGNet's smooth cutoff makes
the energy continuous across boundaries.

The lattice. With a latent u per candidate (`latent_dim = 1`; the gradient designer adds it to its
parameters), a = a₀(p)·exp(u), with a₀ the Shannon-radius estimate of the site distributions p
(2(r_B+r_X) + √2(r_A+r_X))/2. The returned `penalty`, `relax_weight` × reaction energy per atom, moves
u down the energy (a relaxation of the lattice, since the binaries' energies do not depend on a) and
p mildly towards stability; `lattice_a` is reported as a₀(p)·exp(u) with u held, so a lattice target
steers the composition, not the relaxation. Without a latent (scoring decoded candidates, fitting a
residual model on measured ones), a is relaxed here by a few Newton steps on E(u) and the outputs are
those at equilibrium; their gradient in p is then exact for the energy (envelope theorem) and
Vegard-like (through a₀) for the lattice.

Outputs per candidate: `energy_per_atom` (eV/atom), `reaction_energy` (eV/atom against the binaries,
the perovskite world's definition, references mixed by the charge patterns' weights), `lattice_a`
(Å), `pressure` (GPa, −dE/dV at the returned a, itself differentiable; ≈ 0 once relaxed: a
post-filter, not a loss) and, with a latent, `penalty`.

The predictor knows no world: `references(element, charge, anion)` (eV per cation of the element's
binary) is given by whoever builds it. `bind(candidates)` (called by the gradient designer) reads the
sites, charge patterns and feature layout of its RelaxedCandidates.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from athanor.planners.relaxation import shannon_radius

__all__ = ["ChgnetPredictor", "TEMPLATES", "Template", "load_chgnet"]

GPA_PER_EV_A3 = 160.21766208
DEFAULT_ROLES = {"A": "a_site", "B": "b_site", "B2": "b2_site", "X": "anion"}


@dataclass(frozen=True)
class Template:
    """A periodic cell in units of the pseudo-cubic lattice parameter: rows of `lattice`, cartesian
    `positions`, the role of every atom, and how many ABX3 formula units the cell holds."""

    name: str
    lattice: tuple[tuple[float, float, float], ...]
    positions: tuple[tuple[float, float, float], ...]
    roles: tuple[str, ...]
    formula_units: int

    def count(self, role: str) -> float:
        """Atoms of a role per ABX3 formula unit."""
        return self.roles.count(role) / self.formula_units


_X = ((.5, .5, 0), (.5, 0, .5), (0, .5, .5))
TEMPLATES = {
    "perovskite": Template("perovskite", ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                           ((0, 0, 0), (.5, .5, .5), *_X),
                           ("A", "B", "X", "X", "X"), 1),
    # B on the even, B2 on the odd sites of the simple-cubic B sublattice; the fcc primitive cell.
    "double_perovskite": Template(
        "double_perovskite", ((0, 1, 1), (1, 0, 1), (1, 1, 0)),
        ((0, 0, 0), (1, 0, 0), (.5, .5, .5), (1.5, .5, .5),
         (.5, 0, 0), (0, .5, 0), (0, 0, .5), (1.5, 0, 0), (1, .5, 0), (1, 0, .5)),
        ("B", "B2", "A", "A", "X", "X", "X", "X", "X", "X"), 2),
}

_MODEL: Any = None


def load_chgnet() -> Any:
    """CHGNet's pretrained model (weights from its wheel), loaded once per process, in eval mode."""
    global _MODEL
    if _MODEL is None:
        from athanor.simulators.chgnet_cache import MODEL_NAME, quiet

        with quiet():
            from chgnet.model import CHGNet

            _MODEL = CHGNet.load(model_name=MODEL_NAME, use_device="cpu", verbose=False)
        _MODEL.eval()
        for p in _MODEL.parameters():
            p.requires_grad_(False)
    return _MODEL


class _Topology:
    """One neighbour list of a template, valid for a in [low, high): indices and bond lengths at a = 1."""

    def __init__(self, model: Any, template: Template, a: float, device: torch.device):
        from pymatgen.core import Lattice, Structure

        lattice = Lattice(np.array(template.lattice, dtype=float) * a)
        # Species do not enter the neighbour lists; hydrogen keeps pymatgen from guessing anything.
        structure = Structure(lattice, ["H"] * len(template.roles), np.array(template.positions) * a,
                              coords_are_cartesian=True)
        g = model.graph_converter(structure)
        lat = g.lattice.detach()
        cart = g.atom_frac_coord.detach() @ lat  # as CHGNet places them (its images refer to these)
        center, neighbor = cart[g.atom_graph[:, 0].long()], cart[g.atom_graph[:, 1].long()]
        vectors = center - (neighbor + g.neighbor_image.float() @ lat)
        lengths = vectors.norm(dim=1)
        u2d = g.undirected2directed.long()
        self.bond_lengths = (lengths[u2d] / a).to(device)  # undirected, at a = 1
        unit = vectors / lengths[:, None]
        if len(g.bond_graph):
            self.angle_bases = model.angle_basis_expansion(unit[g.bond_graph[:, 2].long()],
                                                           unit[g.bond_graph[:, 4].long()]).to(device)
            self.bond_graph = g.bond_graph[:, [0, 1, 3]].long().to(device)
        else:
            self.angle_bases, self.bond_graph = None, None
        self.atom_graph = g.atom_graph.long().to(device)
        self.directed2undirected = g.directed2undirected.long().to(device)
        self.n_atoms, self.n_undirected = len(template.roles), len(u2d)
        self._batched: dict[int, tuple[torch.Tensor, ...]] = {}

    def batched(self, B: int) -> tuple[torch.Tensor, ...]:
        """Index tensors of B copies (atom graph, directed→undirected, bond graph)."""
        if B not in self._batched:
            dev = self.atom_graph.device
            atom_shift = (torch.arange(B, device=dev) * self.n_atoms)
            bond_shift = (torch.arange(B, device=dev) * self.n_undirected)
            atom_graph = (self.atom_graph[None] + atom_shift[:, None, None]).reshape(-1, 2)
            d2u = (self.directed2undirected[None] + bond_shift[:, None]).reshape(-1)
            bond_graph = None
            if self.bond_graph is not None:
                shift = torch.stack([atom_shift, bond_shift, bond_shift], -1)
                bond_graph = (self.bond_graph[None] + shift[:, None, :]).reshape(-1, 3)
            self._batched[B] = (atom_graph, d2u, bond_graph)
        return self._batched[B]


class ChgnetPredictor:
    """Energy, stability and lattice of templated candidates, differentiable through CHGNet."""

    dtype = torch.float32
    latent_dim = 1
    description = "CHGNet (pretrained, ideal template)"

    def __init__(self, references: Callable[[str, int, str], float], template: str = "perovskite",
                 roles: Mapping[str, str] | None = None, relax_weight: float = 1.0, newton_steps: int = 6,
                 lattice_range: tuple[float, float] = (3.0, 7.0), device: str | None = None,
                 chunk: int | None = None):
        if template not in TEMPLATES:
            raise ValueError(f"designer.options.template: {template!r} is not one of {', '.join(TEMPLATES)}")
        self.template = TEMPLATES[template]
        self.roles = {r: (roles or {}).get(r, DEFAULT_ROLES[r]) for r in dict.fromkeys(self.template.roles)}
        self.references, self.relax_weight, self.newton_steps = references, float(relax_weight), int(newton_steps)
        self.lattice_range = (float(lattice_range[0]), float(lattice_range[1]))
        self.device = torch.device(device or "cpu")
        # On a CPU, batches of a few dozen cells stay in cache: 256 at once cost 3x more per candidate.
        self.chunk = int(chunk or (32 if self.device.type == "cpu" else 4096))
        self.version = f"chgnet-{self.template.name}"
        self.model = load_chgnet().to(self.device)
        self._topologies: dict[int, _Topology] = {}
        self._breaks = self._lattice_breaks()
        self._bound = False

    # --- set-up -------------------------------------------------------------------------------------
    def _lattice_breaks(self) -> list[float]:
        """Lattice values at which some bond crosses the atom- or bond-graph cutoff (sorted)."""
        from pymatgen.core import Lattice, Structure

        conv = self.model.graph_converter
        cutoffs = (float(conv.atom_graph_cutoff), float(conv.bond_graph_cutoff))
        low = self.lattice_range[0]
        t = self.template
        unit = Structure(Lattice(np.array(t.lattice, dtype=float)), ["H"] * len(t.roles), t.positions,
                         coords_are_cartesian=True)
        _, _, _, f = unit.get_neighbor_list(r=max(cutoffs) / low)
        shells = np.unique(np.round(f[f > 1e-8], 6))
        return sorted({c / s for c in cutoffs for s in shells if self.lattice_range[0] < c / s < self.lattice_range[1]})

    def bind(self, candidates: Any) -> "ChgnetPredictor":
        """Read the designer's sites: which block fills each role, its elements, the charge patterns."""
        t = candidates.template
        if t.patterns is None:
            raise ValueError("predictor: chgnet needs charge sites (designer.options.sites) for its template roles")
        blocks = {b.name: (i, b) for i, b in enumerate(t.blocks)}
        missing = [f"{role} ({name})" for role, name in self.roles.items() if name not in blocks]
        if missing:
            raise ValueError(f"predictor: chgnet, template {self.template.name}: no site for role(s) "
                             f"{', '.join(missing)}; name them in designer.options.sites or map them with roles")
        self.block_of = {role: blocks[name][0] for role, name in self.roles.items()}
        elements = sorted({el for _, b in blocks.values() for el in b.choices})
        from pymatgen.core.periodic_table import Element

        z = torch.tensor([Element(el).Z for el in elements], device=self.device)
        self._embedding = self.model.atom_embedding.embedding.weight[z - 1]  # [U, D]
        self._atom_ref = (self.model.composition_model.fc.weight[0, z - 1]
                          if self.model.composition_model is not None else torch.zeros(len(elements), device=self.device))
        W, P = t.width, len(t.patterns)
        self._gather = {}
        for role, k in self.block_of.items():
            g = torch.zeros(W, len(elements), device=self.device)
            for w, el in enumerate(t.blocks[k].choices):
                g[w, elements.index(el)] = 1.0
            self._gather[role] = g
        anion = t.blocks[self.block_of["X"]].choices
        if len(anion) != 1:
            raise ValueError("predictor: chgnet needs one anion (a fixed site such as {elements: [O], multiplicity: 3})")
        self.anion = anion[0]
        masks = candidates.site_masks()  # [P, K, W]
        self._masks = masks.to(self.device)
        states = t.patterns.states
        radius = torch.zeros(P, len(t.blocks), W)
        reference = torch.zeros(P, len(t.blocks), W)
        for role, k in self.block_of.items():
            s = t.blocks[k].site
            for p in range(P):
                for w, el in enumerate(t.blocks[k].choices):
                    if not masks[p, k, w]:
                        continue
                    q = int(states[p, s])
                    radius[p, k, w] = shannon_radius(el, q, 12 if role == "A" else 6)
                    if role != "X":
                        reference[p, k, w] = self._reference_energy(el, q)
        unknown = torch.isnan(reference)
        self._known = ~unknown.to(self.device)
        if unknown.any():  # an ion without a binary (La2+): unstable by ~5 eV/atom, so its pattern is left
            reference[unknown] = float(reference[~unknown].min()) - 25.0
        self._radius, self._reference = radius.to(self.device), reference.to(self.device)
        columns = candidates.feature_columns()  # block index -> its columns in the designer's feature rows
        self._features = {k: columns[b.name] for k, b in enumerate(t.blocks) if b.in_space}
        self._bound = True
        return self

    def _reference_energy(self, element: str, charge: int) -> float:
        from athanor.errors import AthanorError

        try:
            return float(self.references(element, charge, self.anion))
        except (AthanorError, ValueError, KeyError):
            return float("nan")

    # --- site mixtures --------------------------------------------------------------------------------
    def _mixture(self, X: torch.Tensor, relaxed: Mapping[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pattern weights w [B, P] and per-pattern distributions q [B, P, K, W]: the designer's own
        when it passes them, otherwise from feature rows, each under its most likely pattern."""
        if relaxed is not None and "per_pattern" in relaxed:
            return relaxed["pattern_weights"].to(self.dtype), relaxed["per_pattern"].to(self.dtype)
        B = X.shape[0]
        K, W = self._masks.shape[1:]
        dist = torch.zeros(B, K, W, dtype=self.dtype, device=X.device)
        for k, cols in self._features.items():
            dist[:, k, : cols.stop - cols.start] = X[:, cols].to(self.dtype)
        for k in range(K):
            if k not in self._features:  # a fixed site: its one element
                dist[:, k, 0] = 1.0
        # The most likely pattern among those with known binaries; of equally likely ones (LaTiO3:
        # La3+Ti3+ or La2+Ti4+), the one whose binaries lie lowest, the decomposition to beat.
        allowed = (dist[:, None] * (self._masks & self._known)[None]).sum(-1)  # [B, P, K]
        score = torch.log(allowed.clamp_min(1e-12)).sum(-1)  # [B, P]
        reference = (dist[:, None] * self._masks[None] * self._reference[None]).sum((-1, -2))  # [B, P]
        tied = score >= score.max(-1, keepdim=True).values - 1e-6
        best = torch.where(tied, reference, torch.full_like(reference, math.inf)).argmin(-1)
        w = torch.nn.functional.one_hot(best, self._masks.shape[0]).to(self.dtype)
        q = dist[:, None] * self._masks[None]
        q = q / q.sum(-1, keepdim=True).clamp_min(1e-12)
        return w, q

    def _site_terms(self, w: torch.Tensor, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per role: element distribution [B, U]; mean radius; reference energy per cation."""
        out = {}
        for role, k in self.block_of.items():
            qk = q[:, :, k, :]  # [B, P, W]
            out[f"dist_{role}"] = torch.einsum("bp,bpw,wu->bu", w, qk, self._gather[role])
            out[f"r_{role}"] = torch.einsum("bp,bpw,pw->b", w, qk, self._radius[:, k, :])
            out[f"e_{role}"] = torch.einsum("bp,bpw,pw->b", w, qk, self._reference[:, k, :])
        return out

    def initial_lattice(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """a₀: the Shannon-radius estimate of the pseudo-cubic lattice parameter (the world's start)."""
        rb = terms["r_B"] if "B2" not in self.block_of else 0.5 * (terms["r_B"] + terms["r_B2"])
        rx, ra = terms["r_X"], terms["r_A"]
        return (2 * (rb + rx) + math.sqrt(2.0) * (ra + rx)) / 2

    # --- CHGNet ---------------------------------------------------------------------------------------
    def _topology(self, a: float) -> tuple[int, _Topology]:
        key = bisect.bisect(self._breaks, a)
        if key not in self._topologies:
            edges = [self.lattice_range[0], *self._breaks, self.lattice_range[1]]
            middle = 0.5 * (edges[key] + edges[key + 1])
            self._topologies[key] = _Topology(self.model, self.template, middle, self.device)
        return key, self._topologies[key]

    def energy_per_atom(self, terms: Mapping[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """CHGNet's energy per atom of every candidate at lattice a [B], grouped by neighbour list."""
        a = a.to(self.dtype)
        roles = self.template.roles
        atom_dist = torch.stack([terms[f"dist_{r}"] for r in roles], 1)  # [B, n, U]
        ref = (atom_dist @ self._atom_ref).mean(-1)  # AtomRef, intensive: mean over atoms
        keys = [self._topology(float(v))[0] for v in a.detach().clamp(*self.lattice_range).cpu()]
        energy = torch.zeros_like(a)
        for key in sorted(set(keys)):
            members = [i for i, k in enumerate(keys) if k == key]
            for start in range(0, len(members), self.chunk):
                index = torch.tensor(members[start:start + self.chunk], device=a.device)
                energy = energy.index_put((index,), self._forward(self._topologies[key], atom_dist[index], a[index]))
        return energy + ref

    def _forward(self, topo: _Topology, atom_dist: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """CHGNet's message passing (chgnet.model.CHGNet._compute) on mixed atom features."""
        m = self.model
        B = a.shape[0]
        atom_graph, d2u, bond_graph = topo.batched(B)
        lengths = (a[:, None] * topo.bond_lengths[None]).reshape(-1)
        rbf = m.bond_basis_expansion
        bases_ag, bases_bg = rbf.rbf_expansion_ag(lengths), rbf.rbf_expansion_bg(lengths)
        atom_feas = (atom_dist @ self._embedding).reshape(B * topo.n_atoms, -1)
        bond_feas = m.bond_embedding(bases_ag)
        weights_ag, weights_bg = m.bond_weights_ag(bases_ag), m.bond_weights_bg(bases_bg)
        angle_feas = None
        if bond_graph is not None:
            angle_feas = m.angle_embedding(topo.angle_bases.repeat(B, 1))
        for atom_layer, bond_layer, angle_layer in zip(m.atom_conv_layers[:-1], m.bond_conv_layers, m.angle_layers):
            atom_feas = atom_layer(atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=weights_ag,
                                   atom_graph=atom_graph, directed2undirected=d2u)
            if angle_feas is not None and bond_layer is not None:
                bond_feas = bond_layer(atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=weights_bg,
                                       angle_feas=angle_feas, bond_graph=bond_graph)
                if angle_layer is not None:
                    angle_feas = angle_layer(atom_feas=atom_feas, bond_feas=bond_feas, angle_feas=angle_feas,
                                             bond_graph=bond_graph)
        atom_feas = m.atom_conv_layers[-1](atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=weights_ag,
                                           atom_graph=atom_graph, directed2undirected=d2u)
        if m.readout_norm is not None:
            atom_feas = m.readout_norm(atom_feas)
        per_atom = m.mlp(atom_feas).view(B, topo.n_atoms)  # mlp_first: site energies, then the mean
        return per_atom.mean(-1)

    # --- the predictor ------------------------------------------------------------------------------
    def __call__(self, X: torch.Tensor, latent: torch.Tensor | None = None,
                 relaxed: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if not self._bound:
            raise RuntimeError("ChgnetPredictor.bind(candidates) must be called before predicting")
        if latent is None and relaxed is None and len(X) > 1:  # decoded rows repeat: relax each once
            unique, inverse = torch.unique(X, dim=0, return_inverse=True)
            if len(unique) < len(X):
                return {k: v[inverse] for k, v in self(unique).items()}
        w, q = self._mixture(X, relaxed)
        terms = self._site_terms(w, q)
        a0 = self.initial_lattice(terms)
        if latent is None:
            with torch.enable_grad():
                u = self._relax(terms, a0)
            latent_u, penalty = u, None
        else:
            latent_u, penalty = latent[:, 0].to(self.dtype), True
        a = a0 * torch.exp(latent_u)
        energy = self.energy_per_atom(terms, a)
        reference = sum(self.template.count(r) * terms[f"e_{r}"] for r in self.block_of if r != "X")
        atoms_per_fu = len(self.template.roles) / self.template.formula_units
        reaction = (energy * atoms_per_fu - reference) / atoms_per_fu
        out = {"energy_per_atom": energy, "reaction_energy": reaction,
               "lattice_a": a0 * torch.exp(latent_u.detach())}
        if penalty is not None:
            out["penalty"] = self.relax_weight * reaction
        else:
            out["pressure"] = self.pressure(terms, a)
        return out

    def _relax(self, terms: Mapping[str, torch.Tensor], a0: torch.Tensor) -> torch.Tensor:
        """u at which E(a₀·eᵘ) is least, by Newton steps on dE/du (secant curvature), held detached."""
        fixed = {k: v.detach() for k, v in terms.items()}
        a0 = a0.detach()
        u = torch.zeros_like(a0)
        previous = None
        for _ in range(self.newton_steps):
            u = u.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy_per_atom(fixed, a0 * torch.exp(u)).sum(), u)
            if previous is None:
                step = -0.02 * torch.sign(grad)  # a 2 % probe gives the first curvature
            else:
                du, dg = u.detach() - previous[0], grad - previous[1]
                curvature = torch.where(dg * du > 1e-12, dg / du.where(du.abs() > 1e-12, torch.ones_like(du)),
                                        torch.full_like(du, float("nan")))
                probe = torch.where(du.abs() < 1e-5, torch.zeros_like(du), -0.02 * torch.sign(grad))  # converged: stay
                step = torch.where(torch.isfinite(curvature), -grad / curvature, probe)
            previous = (u.detach(), grad)
            u = (u.detach() + step.clamp(-0.05, 0.05)).clamp(-0.25, 0.25)
        return u.detach()

    def pressure(self, terms: Mapping[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """−dE_cell/dV (GPa) at lattice a, V = det(L)·a³; differentiable (a second derivative of
        CHGNet) in a and the distributions when gradients are being taken."""
        differentiable = torch.is_grad_enabled() and (a.requires_grad or any(v.requires_grad for v in terms.values()))
        with torch.enable_grad():
            probe = a if a.requires_grad else a.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy_per_atom(terms, probe).sum(), probe,
                                          create_graph=differentiable)
        n = len(self.template.roles)
        cell = abs(float(np.linalg.det(np.array(self.template.lattice, dtype=float))))
        return -(grad * n) / (3 * cell * a.to(grad.dtype) ** 2) * GPA_PER_EV_A3
