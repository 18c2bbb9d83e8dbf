"""What every agent shares: the campaign spec it was built for, and validated message handling."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from athanor.messages import Fault, Message, parse_message, to_wire
from athanor.spec import Campaign


class History:
    """An agent's copy of the campaign's history, extended by the conductor's feed (athanor/feeds.py).

    `take({"start": n, "records": [...]})` returns the records new to the agent and whether they replace
    all it had (a feed from position 0 is everything), or None when it has fewer than `start` records
    (it was restarted): the agent then answers `RESYNC` and is sent everything."""

    RESYNC = {"resync": True}

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def take(self, feed: dict[str, Any]) -> tuple[list[dict[str, Any]], bool] | None:
        start, records = int(feed["start"]), list(feed["records"])
        if start > len(self.records):
            return None
        if start == 0:
            self.records = records
            return records, True
        new = records[len(self.records) - start:]
        self.records.extend(new)
        return new, False


class Agent:
    role = "agent"

    def __init__(self, spec: dict[str, Any], campaign_id: str):
        self.spec = Campaign.model_validate(spec)
        self.campaign_id = campaign_id

    def receive(self, wire: dict[str, Any], *expected: type) -> Message:
        message = parse_message(wire)
        if expected and not isinstance(message, expected):
            names = ", ".join(t.__name__ for t in expected)
            raise TypeError(f"{self.role} expects {names}, got {type(message).__name__}")
        return message

    def fault(self, wire: Any, step: str, error: BaseException) -> dict[str, Any]:
        """A validation or processing error, reported back as a message naming the sample."""
        sample_id = wire.get("sample_id") if isinstance(wire, dict) else None
        text = _one_line(error)
        return to_wire(Fault(campaign_id=self.campaign_id, sample_id=sample_id, sender=self.role,
                             causation_id=wire.get("id") if isinstance(wire, dict) else None,
                             step=step, error=text))

    def ping(self) -> str:
        return self.role


def _one_line(error: BaseException) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid message: {where}: {first['msg']}"
    return f"{type(error).__name__}: {error}" if not str(error) else str(error).splitlines()[0]
