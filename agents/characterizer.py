"""The characterizer: turns a probe run's documents into a `Measurement` with uncertainties."""

from __future__ import annotations

import math
from typing import Any

from athanor.agents.common import Agent
from athanor.messages import Fault, Measurement, to_wire


class CharacterizerAgent(Agent):
    role = "characterizer"

    def interpret(self, sample_id: str, causation_id: str, instrument: str,
                  documents: list[tuple[str, dict[str, Any]]], duration_s: float) -> dict[str, Any]:
        starts = [doc for name, doc in documents if name == "start"]
        events = [doc for name, doc in documents if name == "event"]
        envelope = dict(campaign_id=self.campaign_id, sample_id=sample_id, causation_id=causation_id,
                        sender=self.role)
        if not starts or not events:
            return to_wire(Fault(**envelope, step="characterize", error=f"{instrument} returned no reading"))
        channels: dict[str, str] = starts[-1]["channels"]
        data = events[-1]["data"]
        values = {output: float(data[key]) for key, output in channels.items()}
        bad = [name for name, v in values.items() if not math.isfinite(v)]
        if bad:
            return to_wire(Fault(**envelope, step="characterize",
                                 error=f"non-finite reading {values[bad[0]]} for {bad[0]!r} from {instrument} "
                                       f"(run {starts[-1]['uid'][:8]})"))
        noise = self.spec.world.noise
        return to_wire(Measurement(
            **envelope, instrument=instrument, values=values,
            uncertainties={k: abs(v) * noise for k, v in values.items()},
            run_uids=[s["uid"] for s in starts], duration_s=duration_s,
        ))
