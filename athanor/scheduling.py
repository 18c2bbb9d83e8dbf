"""Who gets which of a lab's instruments next: the scheduler's policy, without Ray.

Campaigns ask for an instrument of a role for one step of one sample. An instrument takes at most
`depth` grants at a time (the step it runs and the next, which starts the moment the first ends, so
the instrument never waits on a campaign's turnaround); it runs them one at a time. Among the
requests waiting for a role, the policy picks:

- `fair_share` (the default): the campaign that has been granted the fewest steps of that role so far,
  then the oldest request. Every campaign gets an equal share of a contended instrument, whatever
  its batch size, and a newly joined campaign is not starved by one that asked first.
- `priority`: the campaign with the highest priority first; fair share among equals.

An instrument taken out of service (quarantined) gets no grants until it is restored.

Accounting, for `athanor lab status` and the benchmark: per instrument, `demand_s` is the time during
which it had work (a step running or granted to it, or a step of its role waiting for any instrument
it could take). Its instrument reports the time it was actually running steps (`busy_s`), so
busy_s / demand_s is its utilization while work was queued.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Literal

Policy = Literal["fair_share", "priority"]


@dataclass
class Request:
    """A campaign's ask for an instrument of `role`; `exclude`: instruments that campaign took out of service."""

    campaign: str
    role: str
    sample_id: str | None
    step: str | None
    exclude: frozenset[str]
    seq: int
    asked_at: float


@dataclass
class Grant:
    id: int
    campaign: str
    instrument: str
    sample_id: str | None
    step: str | None
    granted_at: float
    started_at: float | None = None


@dataclass
class InstrumentState:
    name: str
    role: str
    grants: dict[int, Grant] = field(default_factory=dict)
    quarantined: str | None = None
    steps: int = 0
    demand_s: float = 0.0


class Arbiter:
    def __init__(self, instruments: dict[str, str], policy: Policy = "fair_share", depth: int = 2,
                 clock: Callable[[], float] = time.time):
        self.instruments = {name: InstrumentState(name, role) for name, role in instruments.items()}
        self.policy = policy
        self.depth = depth
        self.clock = clock
        self.priority: dict[str, int] = {}
        self.served: Counter[tuple[str, str]] = Counter()  # (campaign, role) -> steps granted
        self.waiting: list[Request] = []
        self._seq = itertools.count(1)
        self._ticked = clock()

    # --- campaigns -------------------------------------------------------------------------------
    def join(self, campaign: str, priority: int = 0) -> None:
        self._tick()
        self.priority[campaign] = priority

    def leave(self, campaign: str) -> tuple[list[Request], list[Grant]]:
        """Forget a campaign: its waiting requests and its grants not yet started, which are returned.
        Steps it has running finish on their own (`finish`)."""
        self._tick()
        dropped = [r for r in self.waiting if r.campaign == campaign]
        self.waiting = [r for r in self.waiting if r.campaign != campaign]
        unused = [g for s in self.instruments.values() for g in s.grants.values()
                  if g.campaign == campaign and g.started_at is None]
        for grant in unused:
            del self.instruments[grant.instrument].grants[grant.id]
        self.priority.pop(campaign, None)
        return dropped, unused

    # --- requests and grants -----------------------------------------------------------------------
    def ask(self, campaign: str, role: str, sample_id: str | None = None, step: str | None = None,
            exclude: frozenset[str] = frozenset()) -> Request:
        if campaign not in self.priority:
            raise KeyError(f"campaign {campaign!r} has not joined the lab")
        if not any(s.role == role for s in self.instruments.values()):
            raise KeyError(f"the lab has no {role} instrument")
        self._tick()
        request = Request(campaign, role, sample_id, step, frozenset(exclude), next(self._seq), self.clock())
        self.waiting.append(request)
        return request

    def withdraw(self, request: Request) -> None:
        self._tick()
        self.waiting = [r for r in self.waiting if r is not request]

    def assign(self) -> list[tuple[Request, Grant]]:
        """Grant every waiting request an instrument can take now, by policy: idle instruments first."""
        self._tick()
        made: list[tuple[Request, Grant]] = []
        while True:
            pair = self._best_pair()
            if pair is None:
                return made
            request, state = pair
            self.waiting.remove(request)
            grant = Grant(next(self._seq), request.campaign, state.name, request.sample_id, request.step, self.clock())
            state.grants[grant.id] = grant
            state.steps += 1
            self.served[(request.campaign, request.role)] += 1
            made.append((request, grant))

    def _best_pair(self) -> tuple[Request, InstrumentState] | None:
        open_ = [s for s in self.instruments.values() if s.quarantined is None and len(s.grants) < self.depth]
        for state in sorted(open_, key=lambda s: (len(s.grants), s.steps, s.name)):
            fits = [r for r in self.waiting if r.role == state.role and state.name not in r.exclude]
            if fits:
                return min(fits, key=self._rank), state
        return None

    def _rank(self, request: Request) -> tuple[int, int, int]:
        first = -self.priority.get(request.campaign, 0) if self.policy == "priority" else 0
        return first, self.served[(request.campaign, request.role)], request.seq

    def start(self, grant_id: int) -> Grant | None:
        """The granted step goes to its instrument now; None if the grant is not held (any more)."""
        grant = self.grant(grant_id)
        if grant is not None and grant.started_at is None:
            grant.started_at = self.clock()
            return grant
        return None

    def finish(self, grant_id: int) -> Grant | None:
        """A step ended (or an unused grant is given back): its instrument can take another."""
        grant = self.grant(grant_id)
        if grant is not None:
            self._tick()
            del self.instruments[grant.instrument].grants[grant_id]
        return grant

    def grant(self, grant_id: int) -> Grant | None:
        return next((s.grants[grant_id] for s in self.instruments.values() if grant_id in s.grants), None)

    # --- service -----------------------------------------------------------------------------------
    def quarantine(self, name: str, reason: str) -> None:
        """Out of service; an instrument already out keeps the reason it was first taken out for."""
        self._tick()
        if self.instruments[name].quarantined is None:
            self.instruments[name].quarantined = reason

    def restore(self, name: str) -> None:
        self._tick()
        self.instruments[name].quarantined = None

    # --- accounting --------------------------------------------------------------------------------
    def _tick(self) -> None:
        """Add the time since the last change to the demand of every instrument that had work meanwhile."""
        now = self.clock()
        elapsed, self._ticked = max(0.0, now - self._ticked), now
        if not elapsed:
            return
        for state in self.instruments.values():
            if state.quarantined is None and (state.grants or any(
                    r.role == state.role and state.name not in r.exclude for r in self.waiting)):
                state.demand_s += elapsed

    def queued(self, role: str) -> int:
        return sum(r.role == role for r in self.waiting)

    def snapshot(self) -> dict[str, dict[str, object]]:
        self._tick()
        out: dict[str, dict[str, object]] = {}
        for state in self.instruments.values():
            running = [g for g in state.grants.values() if g.started_at is not None]
            out[state.name] = {
                "role": state.role, "steps_granted": state.steps, "demand_s": round(state.demand_s, 3),
                "granted": [{"campaign": g.campaign, "sample": g.sample_id, "step": g.step,
                             "running": g.started_at is not None} for g in state.grants.values()],
                "running": len(running), "waiting_for_role": self.queued(state.role),
                "quarantined": state.quarantined is not None, "quarantine_reason": state.quarantined}
        return out
