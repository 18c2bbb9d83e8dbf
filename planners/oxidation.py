"""Oxidation states and the charge patterns of a site template (SMOACS-style oxidation-number masks).

Allowed states of an element are the intersection of pymatgen's ICSD states
(`Element.icsd_oxidation_states`) and SMACT's (`smact.Element(el).oxidation_states`), as in the
SMOACS paper (Table B.3, "Ours"). Without smact installed, pymatgen's ICSD states alone are used.
Where the intersection is empty, pymatgen's common states stand in.

A template is a list of sites, each with a multiplicity (atoms per formula unit) and the elements it
may hold. A charge pattern gives every site one oxidation state such that Σ multiplicity·state = 0;
under a pattern, a site may hold only the elements that have that state. So one element per site,
chosen under one pattern's mask, is charge-neutral by construction.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["allowed_states", "Site", "ChargePatterns", "charge_patterns", "is_neutral", "oxidation_source"]


@functools.lru_cache(maxsize=None)
def _smact_states(symbol: str) -> tuple[int, ...] | None:
    try:
        import smact
    except ImportError:
        return None
    try:
        return tuple(int(s) for s in smact.Element(symbol).oxidation_states)
    except Exception:  # noqa: BLE001 -- an element smact does not know: fall back to pymatgen alone
        return None


def oxidation_source() -> str:
    try:
        import smact  # noqa: F401
        return "pymatgen icsd ∩ smact"
    except ImportError:
        return "pymatgen icsd"


@functools.lru_cache(maxsize=None)
def allowed_states(symbol: str) -> tuple[int, ...]:
    """Oxidation states an element may take: pymatgen ICSD ∩ SMACT (sorted; 0 for a lone metal is not one)."""
    from pymatgen.core.periodic_table import Element

    el = Element(symbol)
    icsd = {int(s) for s in el.icsd_oxidation_states}
    smact = _smact_states(symbol)
    states = icsd & set(smact) if smact is not None else icsd
    if not states:
        states = {int(s) for s in el.common_oxidation_states}
    return tuple(sorted(states))


@dataclass(frozen=True)
class Site:
    name: str
    elements: tuple[str, ...]
    multiplicity: int = 1


@dataclass(frozen=True)
class ChargePatterns:
    """The neutral patterns of a template and their masks.

    states [P, S]: the oxidation state of every site under every pattern;
    masks [P, S, E_max]: True where element e may sit at site s under pattern p (E_max = the largest
    site's element count; padding is False).
    """

    sites: tuple[Site, ...]
    states: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.states)

    def describe(self, p: int) -> str:
        return ", ".join(f"{s.name}{'×' + str(s.multiplicity) if s.multiplicity > 1 else ''}:{int(q):+d}"
                         for s, q in zip(self.sites, self.states[p]))


def charge_patterns(sites: Sequence[Site]) -> ChargePatterns:
    """Every assignment of one state per site that sums to zero and leaves each site ≥ 1 element."""
    sites = tuple(sites)
    width = max(len(s.elements) for s in sites)
    per_site = [sorted({q for el in s.elements for q in allowed_states(el)}) for s in sites]
    states, masks = [], []
    for combo in itertools.product(*per_site):
        if sum(s.multiplicity * q for s, q in zip(sites, combo)) != 0:
            continue
        mask = np.zeros((len(sites), width), dtype=bool)
        for i, (s, q) in enumerate(zip(sites, combo)):
            for j, el in enumerate(s.elements):
                mask[i, j] = q in allowed_states(el)
        if all(mask[i].any() for i in range(len(sites))):
            states.append(combo)
            masks.append(mask)
    if not states:
        raise ValueError("no charge-neutral assignment of oxidation states exists for sites "
                         + ", ".join(f"{s.name}×{s.multiplicity} {list(s.elements)}" for s in sites)
                         + f" (states from {oxidation_source()})")
    return ChargePatterns(sites, np.array(states, dtype=int), np.stack(masks))


def is_neutral(choice: dict[str, str], sites: Sequence[Site]) -> bool:
    """Whether one element per site admits neutral allowed states (exact, by enumeration)."""
    options = [allowed_states(choice[s.name]) for s in sites]
    return any(sum(s.multiplicity * q for s, q in zip(sites, combo)) == 0 for combo in itertools.product(*options))
