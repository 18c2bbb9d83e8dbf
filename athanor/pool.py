"""A pool design space's rows: every distinct input row of a tabulated dataset is one possible experiment.

Rows repeated in the file are averaged first (the protocol of Liang et al., npj Comput Mater 7, 188,
2021). The designer chooses among them, the replay world measures them, and an operator's edit of a
pool candidate must land on one of them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from athanor.errors import AthanorError


@dataclass(frozen=True)
class CellProblem:
    """Cells of one column that cannot run: the first one's CSV line (header = line 1) and value."""

    column: str
    line: int
    message: str
    others: tuple[int, ...] = ()  # a few further lines with the same kind of problem
    more: int = 0  # how many further lines beyond `others`

    def __str__(self) -> str:
        text = f"line {self.line}, column {self.column!r}: {self.message}"
        if self.others or self.more:
            also = ", ".join(map(str, self.others)) + (f" and {self.more} more" if self.more else "")
            text += f" (also line{'s' if len(self.others) + self.more > 1 else ''} {also})"
        return text


def read_table(path: str | Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """The dataset as pandas reads it (only `columns`, those of them that exist, when given).

    Raises AthanorError whose message is the reason alone, without the path.
    """
    wanted = None if columns is None else set(columns)
    try:
        return pd.read_csv(path, encoding="utf-8-sig", usecols=None if wanted is None else wanted.__contains__)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise AthanorError(f"cannot read it as CSV: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise AthanorError(f"cannot read the dataset: {exc.strerror or exc}") from None


def data_lines(path: str | Path, rows: int) -> list[int]:
    """The CSV line (header = line 1) on which each of the first `rows` data rows starts, skipping blank
    lines as pandas does."""
    lines: list[int] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        end = reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if len(record) <= 1 and not "".join(record).strip():
                continue
            lines.append(start)
            if len(lines) >= rows:
                break
    return lines


def cell_problems(path: str | Path, table: pd.DataFrame, inputs: Iterable[str],
                  outputs: Iterable[str] = (), shown: int = 3) -> list[CellProblem]:
    """One problem per column of `table` whose cells cannot run, each naming its first bad line.

    Inputs must be finite numbers in every row. Outputs (objectives and constrained outputs) may be
    missing in some rows -- the replay world fails such a sample and the campaign goes on -- but a
    present value must be a finite number, and a column must have at least one.
    """
    found: list[tuple[str, int, str, np.ndarray]] = []  # column, first row, message, every bad row
    for column, is_input in [*((c, True) for c in inputs), *((c, False) for c in outputs)]:
        if column not in table.columns or any(f[0] == column for f in found):
            continue
        raw = table[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        missing = raw.isna().to_numpy()
        text = np.isnan(values) & ~missing  # a cell that is there but is not a number
        infinite = np.isinf(values)
        bad = (missing | text | infinite) if is_input else (text | infinite)
        if bad.any():
            rows = np.flatnonzero(bad)
            first = int(rows[0])
            value = raw.iloc[first]
            value = value.item() if isinstance(value, np.generic) else value
            what = "input" if is_input else "value"
            if missing[first]:
                message = "input is missing: every input must be a finite number"
            elif text[first]:
                message = f"{what} {value!r} is not a number"
            else:
                message = f"{what} {value!r} is not a finite number"
            found.append((column, first, message, rows))
        elif not is_input and len(values) and missing.all():
            found.append((column, 0, "no row has a value (every cell is empty)", np.array([0])))
    if not found:
        return []
    need = max(int(rows[min(shown, len(rows) - 1)]) for _, _, _, rows in found) + 1
    lines = data_lines(path, need)

    def line(row: int) -> int:
        return lines[row] if row < len(lines) else row + 2

    return [CellProblem(column, line(first), message, tuple(line(int(r)) for r in rows[1:shown + 1]),
                        max(0, len(rows) - 1 - shown))
            for column, first, message, rows in found]


def load_pool(path: str | Path, inputs: list[str], outputs: list[str]) -> pd.DataFrame:
    """Distinct input rows with their averaged outputs, in first-appearance order."""
    try:
        table = read_table(path, [*inputs, *outputs])
    except AthanorError as exc:
        raise AthanorError(f"{path}: {exc}") from None
    missing = [c for c in [*inputs, *outputs] if c not in table.columns]
    if missing:
        raise AthanorError(f"{path}: no column {', '.join(map(repr, missing))}")
    problems = cell_problems(path, table, inputs, outputs)
    if problems:
        raise AthanorError(f"{path}: {problems[0]}")
    table = table.apply(pd.to_numeric)
    grouped = table.groupby(inputs, sort=False, dropna=False)[outputs].mean()
    return grouped.reset_index()[[*inputs, *outputs]]


def distinct_rows(table: pd.DataFrame, inputs: list[str]) -> int:
    """How many pool rows these data rows make: repeated input rows are averaged into one."""
    return len(table[inputs].apply(pd.to_numeric).drop_duplicates())


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
