"""The SMOACS representation of a batch of candidates: learnable logits and weights, relaxed into
differentiable distributions and features at a temperature, and decoded into hard candidates.

Charge sites are softmaxes over their elements under the neutral charge patterns' masks
(oxidation.py), mixed by learnable pattern weights; other categoricals a plain softmax; continuous and
integer parameters a sigmoid onto [0, 1]; a composition simplex softmax weights onto the bounded
simplex. Decoding picks the most probable pattern, then per site the most probable element that
pattern allows, so every decoded candidate is charge-neutral by construction. The Goldschmidt
tolerance factor is computed in closed form from Shannon radii of the site distributions.
(`GradientStrategy` in gradient.py optimizes these; this module knows nothing of models or losses.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from athanor import chemistry
from athanor.chemistry import is_element
from athanor.planners.oxidation import ChargePatterns, Site, charge_patterns
from athanor.planners.space import DesignSpace, bounded_simplex
from athanor.spec import CategoricalParameter, IntegerParameter, OutcomeConstraint

_NEG = -1e9  # logit of a masked-out element: exp underflows to exactly 0 at every temperature used


def shannon_radius(symbol: str, charge: int, cn: int) -> float:
    """Shannon ionic radius (Å) at the tabulated coordination nearest `cn`; the atomic radius (or
    1.5 Å) for an ion the table lacks, so a relaxed distribution over it stays differentiable."""
    from pymatgen.core.periodic_table import Element

    found = chemistry.shannon_radius(symbol, charge, cn)
    return found[0] if found is not None else float(Element(symbol).atomic_radius or 1.5)


@dataclass
class _Block:
    """One categorical parameter (or fixed site): its choices and, for a charge site, its index among sites."""

    name: str
    choices: tuple[str, ...]
    in_space: bool = True
    site: int | None = None  # index into the charge template's sites


@dataclass
class _Template:
    blocks: list[_Block] = field(default_factory=list)
    patterns: ChargePatterns | None = None
    width: int = 1  # the widest block

    @property
    def site_blocks(self) -> list[_Block]:
        return [b for b in self.blocks if b.site is not None]


class RelaxedCandidates:
    """Template, masks and radii of one design space; relaxes and decodes batches of parameters."""

    def __init__(self, space: DesignSpace, sites: Mapping[str, Any], constraints: Sequence[OutcomeConstraint] = (),
                 roles: Mapping[str, str] | None = None, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float64):
        self.space, self.device, self.dtype = space, device or torch.device("cpu"), dtype
        self.template = self._build_template(sites)
        self.roles = self._roles(roles, constraints)
        comp = space.space.composition
        self.comp_elements = list(comp.elements) if comp is not None else []
        if comp is not None:
            low, high = space.comp_bounds
            self._low = torch.as_tensor(low, dtype=self.dtype, device=self.device)
            self._high = torch.as_tensor(high, dtype=self.dtype, device=self.device)
        self.radii = self._radius_table() if self.roles else None

    def _build_template(self, sites: Mapping[str, Any]) -> _Template:
        template = _Template()
        charge_sites: list[Site] = []
        params = {p.name: p for p in self.space.space.parameters}
        for p in self.space.space.parameters:
            if not isinstance(p, CategoricalParameter):
                continue
            block = _Block(p.name, tuple(p.choices))
            if p.name in sites:
                if not all(is_element(c) for c in p.choices):
                    raise ValueError(f"designer.options.sites: {p.name!r} has choices that are not element symbols")
                spec = sites[p.name]
                mult = int(spec if not isinstance(spec, Mapping) else spec.get("multiplicity", 1))
                block.site = len(charge_sites)
                charge_sites.append(Site(p.name, block.choices, mult))
            template.blocks.append(block)
        for name, spec in sites.items():
            if name in params:
                if not isinstance(params[name], CategoricalParameter):
                    raise ValueError(f"designer.options.sites: {name!r} is not a categorical parameter")
                continue
            if not isinstance(spec, Mapping) or "elements" not in spec:
                raise ValueError(f"designer.options.sites: {name!r} is no parameter of the space; give it as "
                                 "{elements: [...], multiplicity: n} (a fixed site of one element)")
            elements = tuple(spec["elements"])
            if len(elements) != 1 or not is_element(elements[0]):
                raise ValueError(f"designer.options.sites: fixed site {name!r} must hold exactly one element")
            block = _Block(name, elements, in_space=False, site=len(charge_sites))
            charge_sites.append(Site(name, elements, int(spec.get("multiplicity", 1))))
            template.blocks.append(block)
        if charge_sites:
            template.patterns = charge_patterns(charge_sites)
        template.width = max([len(b.choices) for b in template.blocks] or [1])
        return template

    def _roles(self, roles: Mapping[str, str] | None, constraints: Sequence[OutcomeConstraint]) -> dict[str, int] | None:
        """Which charge sites are A, B and X, when a tolerance-factor constraint wants them."""
        if not any(c.name == "tolerance_factor" for c in constraints) or self.template.patterns is None:
            return None
        names = {b.name: b.site for b in self.template.site_blocks}
        roles = dict(roles or {"A": "a_site", "B": "b_site", "X": "anion"})
        if all(roles.get(r) in names for r in "ABX"):
            return {r: names[roles[r]] for r in "ABX"}
        return None

    def _radius_table(self) -> torch.Tensor:
        """R [P, S, E]: Shannon radius of element e at site s in the state pattern p gives it (A: CN 12, else 6)."""
        pats = self.template.patterns
        cn = {self.roles["A"]: 12}
        R = np.zeros(pats.masks.shape)
        for p in range(len(pats)):
            for s, site in enumerate(pats.sites):
                for e, el in enumerate(site.elements):
                    if pats.masks[p, s, e]:
                        R[p, s, e] = shannon_radius(el, int(pats.states[p, s]), cn.get(s, 6))
        return torch.as_tensor(R, dtype=self.dtype, device=self.device)

    def init_params(self, B: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        kw = dict(dtype=self.dtype)
        t = self.template
        params = {}
        if t.blocks:
            params["logits"] = 0.5 * torch.randn(B, len(t.blocks), t.width, generator=gen, **kw)
        if t.patterns is not None:
            params["patterns"] = 0.5 * torch.randn(B, len(t.patterns), generator=gen, **kw)
        n_cont = sum(1 for p in self.space.space.parameters if not isinstance(p, CategoricalParameter))
        if n_cont:
            params["cont"] = torch.randn(B, n_cont, generator=gen, **kw)
        if self.comp_elements:
            params["comp"] = 0.5 * torch.randn(B, len(self.comp_elements), generator=gen, **kw)
        return {k: v.to(self.device).requires_grad_(True) for k, v in params.items()}

    def valid(self) -> torch.Tensor:
        """[blocks, width]: True where a block has a choice at that index (padding False)."""
        t = self.template
        valid = torch.zeros(len(t.blocks), t.width, dtype=torch.bool, device=self.device)
        for i, b in enumerate(t.blocks):
            valid[i, : len(b.choices)] = True
        return valid

    def site_masks(self) -> torch.Tensor:
        """[P, blocks, width]: per pattern, the allowed choices of every block (free blocks: all valid)."""
        t = self.template
        valid = self.valid()
        masks = valid.expand(len(t.patterns), -1, -1).clone()
        pm = torch.as_tensor(t.patterns.masks, device=self.device)
        for i, b in enumerate(t.blocks):
            if b.site is not None:
                masks[:, i, :] = False
                masks[:, i, : pm.shape[2]] = pm[:, b.site, :]
        return masks

    def relax(self, params: Mapping[str, torch.Tensor], temperature: float) -> dict[str, torch.Tensor]:
        """Distributions and features of the relaxed candidates at a temperature."""
        t = self.template
        out: dict[str, torch.Tensor] = {}
        if t.blocks:
            logits = params["logits"]
            if t.patterns is not None:
                masks = self.site_masks()  # [P, K, W]
                masked = logits[:, None] + torch.where(masks, 0.0, _NEG).to(logits.dtype)  # [B, P, K, W]
                q = torch.softmax(masked / temperature, dim=-1)
                w = torch.softmax(params["patterns"] / temperature, dim=-1)  # [B, P]
                dist = torch.einsum("bp,bpkw->bkw", w, q)
                out["pattern_weights"], out["per_pattern"] = w, q
            else:
                masked = logits + torch.where(self.valid(), 0.0, _NEG).to(logits.dtype)
                dist = torch.softmax(masked / temperature, dim=-1)
            out["dist"] = dist
        feats = []
        block_index = {b.name: i for i, b in enumerate(t.blocks)}
        j = 0
        for p in self.space.space.parameters:
            if isinstance(p, CategoricalParameter):
                feats.append(out["dist"][:, block_index[p.name], : len(p.choices)])
            else:
                feats.append(torch.sigmoid(params["cont"][:, j : j + 1]))
                j += 1
        if self.comp_elements:
            w = torch.softmax(params["comp"], dim=-1)
            x = self._low + (1.0 - self._low.sum()) * w
            out["comp"] = x
            out["comp_excess"] = torch.relu(x - self._high).sum(-1)
            feats.append(x)
        out["features"] = torch.cat(feats, dim=-1)
        return out

    def decode(self, params: Mapping[str, torch.Tensor]) -> tuple[list[dict[str, Any]], torch.Tensor, list[int | None]]:
        """Hard candidates: inputs, their exact feature rows and their charge pattern (index or None)."""
        t = self.template
        with torch.no_grad():
            B = next(iter(params.values())).shape[0]
            rows: list[dict[str, Any]] = [{} for _ in range(B)]
            chosen_pattern: list[int | None] = [None] * B
            picks = None
            if t.blocks:
                logits = params["logits"]
                if t.patterns is not None:
                    p_star = params["patterns"].argmax(-1)  # [B]
                    allowed = self.site_masks()[p_star]  # [B, K, W]
                    chosen_pattern = [int(p) for p in p_star]
                else:
                    allowed = self.valid().expand(B, -1, -1)
                picks = torch.where(allowed, logits, torch.full_like(logits, -math.inf)).argmax(-1)  # [B, K]
            block_index = {b.name: i for i, b in enumerate(t.blocks)}
            feats = []
            j = 0
            for p in self.space.space.parameters:
                if isinstance(p, CategoricalParameter):
                    k = block_index[p.name]
                    idx = picks[:, k]
                    feats.append(torch.nn.functional.one_hot(idx, len(p.choices)).to(self.dtype))
                    for row, i in zip(rows, idx.tolist()):
                        row[p.name] = p.choices[i]
                else:
                    u = torch.sigmoid(params["cont"][:, j]).cpu().numpy().astype(float)
                    j += 1
                    col = []
                    for row, v in zip(rows, u):
                        if isinstance(p, IntegerParameter):
                            row[p.name] = int(np.clip(round(p.low + v * (p.high - p.low)), p.low, p.high))
                            col.append((row[p.name] - p.low) / (p.high - p.low) if p.high > p.low else 0.0)
                        else:
                            row[p.name] = float(p.low + v * (p.high - p.low))
                            col.append(float(v))
                    feats.append(torch.tensor(col, dtype=self.dtype, device=self.device)[:, None])
            if self.comp_elements:
                w = torch.softmax(params["comp"], dim=-1).cpu().double().numpy()
                low, high = self.space.comp_bounds
                fractions = bounded_simplex(w, low, high)
                for row, x in zip(rows, fractions):
                    row.update({el: float(v) for el, v in zip(self.comp_elements, x)})
                feats.append(torch.as_tensor(fractions, dtype=self.dtype, device=self.device))
            return rows, torch.cat(feats, dim=-1), chosen_pattern

    def tolerance_factor(self, relaxed: Mapping[str, torch.Tensor], hard: torch.Tensor | None = None) -> torch.Tensor:
        """Goldschmidt t = (rA + rX) / (√2 (rB + rX)), radii expected under the site distributions."""
        t = self.template
        if hard is None:
            q, w = relaxed["per_pattern"], relaxed["pattern_weights"]  # [B, P, K, W], [B, P]
        else:
            q, w = relaxed["per_pattern_hard"], relaxed["pattern_hard"]
        blocks = {b.site: i for i, b in enumerate(t.blocks) if b.site is not None}
        R = self.radii  # [P, S, E]
        r = {}
        for role, s in self.roles.items():
            k = blocks[s]
            qs = q[:, :, k, : R.shape[2]]
            r[role] = torch.einsum("bp,bpe,pe->b", w, qs, R[:, s, :])
        return (r["A"] + r["X"]) / (math.sqrt(2.0) * (r["B"] + r["X"]))

    def features(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        feats: list[float] = []
        for p in self.space.space.parameters:
            if isinstance(p, CategoricalParameter):
                feats += [1.0 if inputs[p.name] == c else 0.0 for c in p.choices]
            else:
                feats.append((float(inputs[p.name]) - p.low) / (p.high - p.low) if p.high > p.low else 0.0)
        feats += [float(inputs[el]) for el in self.comp_elements]
        return torch.tensor(feats, dtype=self.dtype, device=self.device)

    def feature_columns(self) -> dict[str, slice]:
        """Each space parameter's columns in a feature row (the order of `features` and `relax`)."""
        columns, j = {}, 0
        for p in self.space.space.parameters:
            width = len(p.choices) if isinstance(p, CategoricalParameter) else 1
            columns[p.name], j = slice(j, j + width), j + width
        return columns

    def length_scales(self, min_distance: float) -> torch.Tensor:
        """Per feature: 0.5 for a categorical choice, min_distance (or 0.02) for a continuous value."""
        scales = []
        cont = min_distance if min_distance > 0 else 0.02
        for p in self.space.space.parameters:
            scales += [0.5] * len(p.choices) if isinstance(p, CategoricalParameter) else [cont]
        scales += [cont] * len(self.comp_elements)
        return torch.tensor(scales, dtype=self.dtype, device=self.device)

    def hard_relaxed(self, params: Mapping[str, torch.Tensor], patterns: list[int | None], t_end: float) -> dict[str, torch.Tensor]:
        """One-hot pattern weights and per-pattern distributions of the decoded candidates (for t)."""
        out: dict[str, torch.Tensor] = {}
        if self.roles is None:
            return out
        relaxed = self.relax(params, t_end)
        B = len(patterns)
        P = len(self.template.patterns)
        w = torch.zeros(B, P, dtype=self.dtype, device=self.device)
        w[torch.arange(B), torch.tensor(patterns, device=self.device)] = 1.0
        masks = self.site_masks()
        logits = params["logits"]
        masked = torch.where(masks[None], logits[:, None], torch.full_like(logits[:, None].expand(-1, P, -1, -1), -math.inf))
        q = torch.nn.functional.one_hot(masked.argmax(-1), logits.shape[-1]).to(self.dtype)
        out["per_pattern_hard"], out["pattern_hard"] = q, w
        out["per_pattern"], out["pattern_weights"] = relaxed["per_pattern"], relaxed["pattern_weights"]
        return out
