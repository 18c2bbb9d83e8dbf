"""Operators' decisions on proposals. The CLI (and later the chat) share this one path.

A decision is checked against the store (the sample exists and awaits approval) and posted to the
inbox; the conductor logs it as an `ApprovalDecision` with who, when and through which channel.
"""

from __future__ import annotations

import getpass
import os

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
