"""Which instrument takes a step: the campaign's own pool, or a lab's scheduler shared with other campaigns.

Both give the conductor a `Slot` for a step of a role: the instrument's name (the conductor logs the
step's intent naming it) and `run(request, key)`, which runs the step there. The slot is held while
the step runs and given back when the conductor leaves the `slot` block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from athanor.errors import AthanorError

QUEUE_DEPTH = 2  # steps an instrument holds at once: the one it runs, and the next


@dataclass
class Slot:
    name: str
    run: Callable[[Any, str], Awaitable[Any]]


class PoolDispatch:
    """The campaign's own instruments. A step goes to an instrument of its role in service with room:
    an idle one before one busy with a single step (the next step then waits in its queue and starts
    the moment the current one ends, with no round trip through the conductor), the least used first
    (so all of a pool get used). `quarantined` is the conductor's: instruments out of service."""

    def __init__(self, spec: Any, handles: dict[str, Any], quarantined: dict[str, str]):
        self.spec = spec
        self.handles = handles
        self.quarantined = quarantined
        self.handed: Counter[str] = Counter()  # instrument -> steps handed to it and not yet returned
        self.steps_handed: Counter[str] = Counter()  # instrument -> steps handed to it this session
        self._freed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def slot(self, role: str, sample_id: str | None = None, step: str | None = None) -> AsyncIterator[Slot]:
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            name = await self._freed.wait_for(lambda: self._free(role))
            self.handed[name] += 1
            self.steps_handed[name] += 1
        try:
            yield Slot(name, lambda request, key: self.handles[name].run.remote(request, key))
        finally:
            async with self._freed:
                self.handed[name] -= 1
                self._freed.notify_all()

    def _free(self, role: str) -> str | None:
        ready = [i.name for i in self.spec.instruments if i.role == role and i.name not in self.quarantined
                 and self.handed[i.name] < QUEUE_DEPTH]
        return min(ready, key=lambda n: (self.handed[n], self.steps_handed[n]), default=None)

    async def quarantine(self, name: str, reason: str) -> None:
        """Nothing to tell: `_free` reads the conductor's quarantine."""

    async def restore(self, name: str) -> None:
        if self._freed is not None:
            async with self._freed:
                self._freed.notify_all()


class LabDispatch:
    """A lab's instruments through its scheduler (agents/lab.py): the scheduler picks the instrument and
    runs the step there. Taking an instrument out of service, or putting it back, is lab-wide: an
    instrument that loses this campaign's steps would lose everyone's."""

    def __init__(self, scheduler: Any, campaign_id: str, rejoin: Callable[[], Awaitable[None]] | None = None):
        self.scheduler = scheduler
        self.campaign_id = campaign_id
        self.rejoin = rejoin  # join again, if the lab took this campaign for gone
        self.steps_handed: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def slot(self, role: str, sample_id: str | None = None, step: str | None = None) -> AsyncIterator[Slot]:
        reply = await self.scheduler.acquire.remote(self.campaign_id, role, sample_id, step)
        if isinstance(reply, dict) and reply.get("not_joined") and self.rejoin is not None:
            await self.rejoin()
            reply = await self.scheduler.acquire.remote(self.campaign_id, role, sample_id, step)
        if not isinstance(reply, list):
            why = reply.get("error") if isinstance(reply, dict) else "the lab dropped this campaign"
            raise AthanorError(f"the lab gave no {role} instrument: {why}")
        name, grant = reply
        self.steps_handed[name] += 1
        used = False

        def run(request: Any, key: str) -> Awaitable[Any]:
            nonlocal used
            used = True
            return self.scheduler.run.remote(self.campaign_id, grant, request, key)

        try:
            yield Slot(name, run)
        finally:
            if not used:
                self.scheduler.release.remote(self.campaign_id, grant)

    async def quarantine(self, name: str, reason: str) -> None:
        await self.scheduler.quarantine.remote(name, reason)

    async def restore(self, name: str) -> None:
        await self.scheduler.restore.remote(name)
