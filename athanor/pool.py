"""A pool design space's rows: every distinct input row of a tabulated dataset is one possible experiment.

Rows repeated in the file are averaged first (the protocol of Liang et al., npj Comput Mater 7, 188,
2021). The designer chooses among them, the replay world measures them, and an operator's edit of a
pool candidate must land on one of them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from athanor.errors import AthanorError


def load_pool(path: str | Path, inputs: list[str], outputs: list[str]) -> pd.DataFrame:
    """Distinct input rows with their averaged outputs, in first-appearance order."""
    try:
        table = pd.read_csv(path, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise AthanorError(f"{path}: cannot read it as CSV: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise AthanorError(f"{path}: cannot read the dataset: {exc.strerror or exc}") from None
    missing = [c for c in [*inputs, *outputs] if c not in table.columns]
    if missing:
        raise AthanorError(f"{path}: no column {', '.join(map(repr, missing))}")
    for column in inputs:
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = numeric.isna() | ~np.isfinite(numeric.fillna(0.0))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise AthanorError(f"{path}: line {row + 2}, column {column!r}: input {table[column].iloc[row]!r} "
                               f"is not a finite number")
        table[column] = numeric
    grouped = table.groupby(inputs, sort=False, dropna=False)[outputs].mean()
    return grouped.reset_index()[[*inputs, *outputs]]


@lru_cache(maxsize=8)
def pool_inputs(path: Path, inputs: tuple[str, ...]) -> pd.DataFrame:
    """The pool's distinct input rows (cached: operators' edits look them up)."""
    return load_pool(path, list(inputs), [])


def find_row(pool: pd.DataFrame, inputs: Mapping[str, Any]) -> tuple[int | None, int]:
    """The row whose inputs equal these (None if none does), and the nearest row by range-scaled distance."""
    table = pool.to_numpy(dtype=float)
    want = np.array([float(inputs[c]) for c in pool.columns])
    span = np.ptp(table, axis=0)
    distance = np.sqrt((((table - want) / np.where(span > 0, span, 1.0)) ** 2).sum(axis=1))
    exact = np.flatnonzero(np.isclose(table, want, rtol=1e-6, atol=1e-9).all(axis=1))
    return (int(exact[0]) if exact.size else None), int(np.argmin(distance))
