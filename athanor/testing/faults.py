"""A world that fails where a test says: the instrument faults a lab wants its campaign to survive."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, Callable, Iterable

from athanor.simulators.base import InstrumentFault

STEP_METHODS = ("synthesize", "measure", "diffract")  # what an instrument's hardware asks of a world


class FaultyWorld:
    """Wraps a world; its instrument steps raise `InstrumentFault` for the step keys in `fail` (such as
    "S0002:synthesis" — the sample on the instrument and the step's role — or a predicate on the key)
    and, independently, with probability `rate`, seeded by the key so a rerun fails the same steps.
    Everything else is the wrapped world's. `calls` counts the steps each key was asked for: a test
    asserts with it that nothing ran twice."""

    def __init__(self, world: Any, fail: Iterable[str] | Callable[[str], bool] = (), rate: float = 0.0, seed: int = 0):
        self.world = world
        self.fail = fail if callable(fail) else set(fail).__contains__
        self.rate = rate
        self.seed = seed
        self.calls: Counter[str] = Counter()
        self.faults: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.world, name)
        if name not in STEP_METHODS or not callable(attr):
            return attr

        def step(*args: Any, **kwargs: Any) -> Any:
            key = str(kwargs.get("key", args[-1] if args else ""))
            self.calls[key] += 1
            if self.fail(key) or self._draw(key) < self.rate:
                self.faults.append(key)
                raise InstrumentFault(f"injected fault during {key}")
            return attr(*args, **kwargs)

        return step

    def _draw(self, key: str) -> float:
        digest = hashlib.sha256(f"faulty:{self.seed}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2 ** 64
