"""The contract every design strategy meets, and the data it sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

from athanor.messages import Candidate


@dataclass(frozen=True)
class Observation:
    """One sample as a strategy sees it: where it was made and what was measured (empty if failed)."""

    inputs: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)
    pool_index: int | None = None
    failed: bool = False


@runtime_checkable
class Strategy(Protocol):
    name: str

    def propose(self, history: list[Observation], n: int, pending: list[Observation]) -> list[Candidate]:
        """Return `n` new candidates, given the measured history and the points still in flight."""
        ...


def input_key(inputs: Mapping[str, Any]) -> tuple:
    """A hashable identity for a point of the design space (floats to 12 digits), to spot repeats."""
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in inputs.items()))
