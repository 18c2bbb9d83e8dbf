"""Operators' decisions on proposals. The CLI (and later the chat) share this one path.

A decision is checked against the store (the sample exists and awaits approval) and posted to the
inbox; the conductor logs it as an `ApprovalDecision` with who, when and through which channel.
"""

from __future__ import annotations

import getpass
import math
import os
from typing import Any, Sequence

from athanor.errors import AthanorError
from athanor.store import Store


def current_user(explicit: str | None = None) -> str:
    return explicit or os.environ.get("ATHANOR_USER") or getpass.getuser()


def decide(store: Store, sample_ids: list[str], approve: bool, user: str, reason: str = "",
           channel: str = "cli") -> list[str]:
    """Post approve/reject commands for every sample, or none if any is not awaiting approval."""
    samples = {s["id"]: s for s in store.samples()}
    problems = []
    for sample_id in sample_ids:
        sample = samples.get(sample_id)
        if sample is None:
            problems.append(f"no sample {sample_id!r} in campaign {store.campaign_id}")
        elif not sample["awaiting_approval"]:
            problems.append(f"sample {sample_id} is {sample['state']}, not awaiting approval")
    if not approve and not reason.strip():
        problems.append("a rejection needs a reason")
    if problems:
        raise AthanorError("; ".join(problems))
    action = "approve" if approve else "reject"
    for sample_id in sample_ids:
        store.post_command({"action": action, "sample_id": sample_id, "user": user,
                            "reason": reason, "channel": channel})
    return sample_ids


def rule_failures(candidate: dict[str, Any], measured: Sequence[dict[str, Any]], rules: Any,
                  objective: str) -> list[str]:
    """Why the `rules` policy would not approve this candidate by itself (empty: it would).

    `measured` are the samples the designer saw (the lag rule), so the decision does not depend on
    the order in which steps finished and a seed replays it."""
    inputs = candidate.get("inputs") or {}
    done = [s for s in measured if s.get("values")]
    if len(done) < rules.min_measured:
        return [f"only {len(done)} of the {rules.min_measured} measurements the rules ask for first"]
    problems = []
    if rules.inside_explored:
        for name, value in inputs.items():
            seen = [s["inputs"].get(name) for s in done if name in s["inputs"]]
            if isinstance(value, str):
                if value not in seen:
                    problems.append(f"{name} = {value!r} was never measured")
                continue
            low, high = min(seen, default=math.inf), max(seen, default=-math.inf)
            slack = rules.margin * (high - low)
            if not low - slack <= value <= high + slack:
                problems.append(f"{name} = {value:.4g} is outside the measured {low:.4g} to {high:.4g}")
    if rules.max_relative_sd is not None:
        prediction = (candidate.get("predicted") or {}).get(objective)
        if not prediction:
            problems.append(f"no model prediction of {objective}")
        else:
            ratio = prediction["sd"] / max(abs(prediction["mean"]), 1e-12)
            if ratio > rules.max_relative_sd:
                problems.append(f"{objective} too uncertain (sd/|mean| {ratio:.2f} > {rules.max_relative_sd:g})")
    return problems
