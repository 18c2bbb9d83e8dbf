"""Bluesky documents in the store: written as a run emits them, read back to reconcile a step.

An instrument writes each document of its run into the store's `documents` table the moment the
RunEngine emits it (`DocumentSink`, a RunEngine subscriber): the start document, carrying the step's
`idempotency_key` and `step`, is committed before the plan moves anything. So after a crash the store
alone tells, for every step that was begun (`run_outcome`), whether its run finished (its result is
recovered from the documents, nothing runs again), failed, or was interrupted mid-run.

JSON has no NaN or infinity (PostgreSQL refuses them): `encode_nonfinite` stores such a number as null
and keeps the fact beside it, and `decode_nonfinite` gives the document back as it was emitted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import numpy as np

NONFINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def jsonable(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists (json.dumps' `default`)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def plain(doc: Any) -> Any:
    """A document as plain JSON types (numpy converted), non-finite floats kept as floats."""
    return json.loads(json.dumps(doc, default=jsonable))


def encode_nonfinite(doc: Any) -> tuple[Any, dict[str, str]]:
    """The document with every non-finite float replaced by None, and {JSON pointer: "NaN" | ...}."""
    found: dict[str, str] = {}

    def walk(value: Any, pointer: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found[pointer] = NONFINITE_NAMES[str(value)]
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{pointer}/{str(k).replace('~', '~0').replace('/', '~1')}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{pointer}/{i}") for i, v in enumerate(value)]
        return value

    return walk(doc, ""), found


def decode_nonfinite(doc: Any, nonfinite: dict[str, str] | None) -> Any:
    """Put the non-finite numbers recorded by `encode_nonfinite` back in place."""
    for pointer, name in (nonfinite or {}).items():
        parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        target = doc
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        value = float(name.replace("Infinity", "inf"))
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return doc


@dataclass(frozen=True)
class RunOutcome:
    """What the stored documents of one step's key say happened to it."""

    state: str  # "never_started" | "finished" | "failed" | "interrupted"
    documents: list[tuple[str, dict[str, Any]]]
    run_uid: str | None = None
    started_at: datetime | None = None
    reason: str = ""


def run_outcome(documents: Iterable[tuple[str, dict[str, Any]]]) -> RunOutcome:
    """Judge a step from its stored documents (in emission order; a step is one run, its last is judged)."""
    docs = list(documents)
    starts = [d for n, d in docs if n == "start"]
    if not starts:
        return RunOutcome("never_started", docs)
    start = starts[-1]
    uid = start.get("uid")
    started = datetime.fromtimestamp(float(start.get("time", 0.0)), tz=timezone.utc)
    run = [(n, d) for n, d in docs if d.get("run_start") == uid or d.get("uid") == uid
           or n in ("event", "event_page")]
    stop = next((d for n, d in reversed(docs) if n == "stop" and d.get("run_start") == uid), None)
    if stop is None:
        return RunOutcome("interrupted", run, uid, started,
                          f"run {str(uid)[:8]} started at {started:%Y-%m-%d %H:%M:%S} UTC and never finished")
    if stop.get("exit_status") != "success":
        why = stop.get("reason") or stop.get("exit_status")
        return RunOutcome("failed", run, uid, started, f"run {str(uid)[:8]} ended {stop.get('exit_status')}: {why}")
    return RunOutcome("finished", run, uid, started)


class DocumentSink:
    """A RunEngine subscriber that writes every document of a step's run to the store as it is emitted.

    `write(documents, sample_id, key, step, run_uid)` is the store's `add_documents`; the start document is written alone and at once (the
    plan has not moved yet), later ones as they come. A write that fails raises in the RunEngine's
    callback, which aborts the plan: nothing happens at an instrument that the store does not know."""

    def __init__(self, write: Callable[..., None]):
        self.write = write
        self.sample_id: str | None = None
        self.key: str | None = None
        self.step: str | None = None
        self.documents: list[tuple[str, dict[str, Any]]] = []
        self._written = 0

    def begin(self, sample_id: str | None, key: str, step: str) -> None:
        self.sample_id, self.key, self.step = sample_id, key, step
        self.documents, self._written = [], 0

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.documents.append((name, plain(doc)))
        if name != "descriptor":  # a descriptor goes with the first event that needs it
            run_uid = next((d.get("uid") for n, d in self.documents if n == "start"), None)
            self.write(self.documents[self._written:], self.sample_id, self.key, self.step, run_uid)
            self._written = len(self.documents)
