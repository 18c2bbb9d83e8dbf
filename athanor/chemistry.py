"""Small chemistry lookups shared by worlds and strategies (pymatgen's tables, nothing world-specific)."""

from __future__ import annotations

from typing import Any

_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10,
          "XI": 11, "XII": 12, "XIV": 14}


def is_element(symbol: Any) -> bool:
    from pymatgen.core.periodic_table import Element

    return isinstance(symbol, str) and Element.is_valid_symbol(symbol)


def shannon_radius(symbol: str, charge: int, cn: int) -> tuple[float, str, int] | None:
    """Shannon ionic radius (Å) at coordination `cn`, else at the nearest tabulated one (the higher
    on a tie), as (radius, the table's coordination key, its number); None when the ion has none.
    High spin where the table distinguishes spins."""
    from pymatgen.core.periodic_table import Element

    table = Element(symbol).data.get("Shannon radii", {}).get(str(int(charge)), {})
    options = [(key, _ROMAN[key.rstrip("SQPY")]) for key in table if key.rstrip("SQPY") in _ROMAN]
    if not options:
        return None
    key, found = min(options, key=lambda o: (abs(o[1] - cn), -o[1], len(o[0])))
    spins = table[key]
    entry = spins.get("") or spins.get("High Spin") or next(iter(spins.values()))
    return float(entry["ionic_radius"]), key, found
