"""Operators' commands to a campaign: approve, reject or edit a proposal; pause, resume; set the batch size;
put an instrument taken out of service back (restore).

The CLI and the chat share this one path. A command is checked against the store and the campaign's
design space, then posted to the store's inbox; the conductor checks it again against the state it
finds (`problems`) and logs what it did — an `ApprovalDecision` or a `CampaignEvent` — with who,
when, through which channel and, from the chat, the transcript that led to it. Commands posted to a
stopped campaign take effect when it resumes.
"""

from __future__ import annotations

import getpass
import math
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError, field_validator

from athanor.errors import AthanorError
from athanor.pool import find_row, pool_inputs
from athanor.spec import Campaign, CategoricalParameter, ContinuousParameter, IntegerParameter
from athanor.store import Store

MAX_BATCH_SIZE = 64
# Strict: `true` is no number and 3 no sample id, whatever a client or a model sends.
StrictInput = StrictFloat | StrictInt | StrictStr


class TranscriptLink(BaseModel):
    """Where the conversation that led to a decision is: chat session, transcript file, the words."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str = Field(min_length=1, max_length=64)
    file: str = Field(default="", max_length=200)
    operator_message: str = Field(max_length=4000)


class OperatorCommand(BaseModel):
    """One entry of the inbox."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    action: Literal["approve", "reject", "edit", "pause", "resume", "batch_size", "restore"]
    user: StrictStr = Field(min_length=1, max_length=100)
    channel: Literal["cli", "chat", "web"] = "cli"
    sample_id: StrictStr | None = Field(default=None, max_length=64)
    reason: StrictStr = Field(default="", max_length=2000)
    inputs: dict[StrictStr, StrictInput] | None = None  # edit: the complete new inputs
    batch_size: StrictInt | None = None
    instrument: StrictStr | None = Field(default=None, max_length=40)  # restore: the one to put back in service
    transcript: TranscriptLink | None = None
    # Who, as far as this process can vouch: `user` is who the operator says they are; `login` the
    # operating-system account of the process that posted it; `authenticated` that `user` holds a token.
    login: StrictStr | None = Field(default=None, max_length=100)
    authenticated: bool = False

    @field_validator("user")
    @classmethod
    def _not_a_policy(cls, user: str) -> str:
        if user.strip().lower().startswith("policy:"):
            raise ValueError("names starting with 'policy:' are the approval policy's own")
        return user.strip()


def current_user(explicit: str | None = None, spec: Campaign | None = None) -> str:
    """--user, else ATHANOR_USER, else the campaign's `approval.operator`, else the login name."""
    return (explicit or os.environ.get("ATHANOR_USER") or (spec.approval.operator if spec else None)
            or login_name())


def login_name() -> str:
    """The operating-system account running this process: recorded beside whatever name it claims."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"


def validate_inputs(spec: Campaign, inputs: Mapping[str, Any]) -> list[str]:
    """Problems of a complete set of inputs against the campaign's design space (empty: valid)."""
    space, problems = spec.space, []
    names = space.input_names
    unknown = [k for k in inputs if k not in names]
    if unknown:
        problems.append(f"unknown input(s) {', '.join(unknown)}; the inputs are {', '.join(names)}")
    missing = [n for n in names if n not in inputs]
    if missing:
        problems.append(f"missing input(s) {', '.join(missing)}")
    if space.pool is not None:
        problems += [f"{name}={inputs[name]!r} is not a finite number" for name in names
                     if name in inputs and not _finite(inputs[name])]
    for p in space.parameters:
        if p.name not in inputs:
            continue
        value = inputs[p.name]
        if isinstance(p, CategoricalParameter):
            if value not in p.choices:
                problems.append(f"{p.name}={value!r} is not one of {p.choices}")
        elif not _finite(value):
            problems.append(f"{p.name}={value!r} is not a finite number")
        elif isinstance(p, IntegerParameter) and value != int(value):
            problems.append(f"{p.name}={value!r} is not an integer")
        elif isinstance(p, (ContinuousParameter, IntegerParameter)) and not p.low <= value <= p.high:
            problems.append(f"{p.name}={value} is outside [{p.low}, {p.high}]")
    if space.composition is not None:
        fractions = []
        for el, (low, high) in space.composition.elements.items():
            if el not in inputs:
                continue
            value = inputs[el]
            if not _finite(value):
                problems.append(f"{el}={value!r} is not a finite fraction")
                continue
            fractions.append(float(value))
            if not low - 1e-9 <= value <= high + 1e-9:
                problems.append(f"{el}={value} is outside [{low}, {high}]")
        if len(fractions) == len(space.composition.elements) and abs(sum(fractions) - 1.0) > 1e-6:
            problems.append(f"the fractions of {', '.join(space.composition.elements)} sum to {sum(fractions):g}, not 1")
    return problems


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def problems(command: OperatorCommand, samples: Sequence[dict[str, Any]], spec: Campaign) -> list[str]:
    """Why this command cannot be carried out against these samples (empty: it can)."""
    out: list[str] = []
    needs = {"sample_id": command.action in ("approve", "reject", "edit"), "inputs": command.action == "edit",
             "batch_size": command.action == "batch_size", "instrument": command.action == "restore"}
    out += [f"{field} does not go with {command.action}" for field, wanted in needs.items()
            if not wanted and getattr(command, field) is not None]
    if command.action in ("approve", "reject", "edit"):
        sample = next((s for s in samples if s["id"] == command.sample_id), None)
        if sample is None:
            out.append(f"no sample {command.sample_id!r} in this campaign")
        elif not sample["awaiting_approval"]:
            out.append(f"sample {sample['id']} is {sample['state']}, not awaiting approval")
        elif command.action == "edit" and sample["state"] != "proposed":
            out.append(f"sample {sample['id']} is {sample['state']} with an interrupted step: it cannot be edited; "
                       "approve to run the step again or reject to fail the sample")
        if command.action == "reject" and not command.reason.strip():
            out.append("a rejection needs a reason")
        if command.action == "edit":
            if command.inputs is None:
                out.append("an edit needs the new inputs")
            else:
                found = validate_inputs(spec, command.inputs)
                if not found and spec.space.pool is not None:
                    found = _pool_row_problems(spec, command.inputs, samples, command.sample_id)
                out += [f"edit of {command.sample_id}: {p}" for p in found]
    elif command.action == "batch_size":
        n = command.batch_size
        if n is None or isinstance(n, bool) or not 1 <= n <= MAX_BATCH_SIZE:
            out.append(f"the batch size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {n!r}")
    elif command.action == "restore":
        names = [i.name for i in spec.instruments]
        if spec.lab is None and command.instrument not in names:  # a lab's instruments: the conductor knows them
            out.append(f"no instrument {command.instrument!r} in this campaign; the instruments are {', '.join(names)}")
    return out


def pool_row(spec: Campaign, inputs: Mapping[str, Any]) -> int | None:
    """The pool row an edit lands on (None: the space is not a pool, or no row has these inputs)."""
    if spec.space.pool is None:
        return None
    return find_row(pool_inputs(spec.space.pool.dataset, tuple(spec.space.pool.inputs)), inputs)[0]


def _pool_row_problems(spec: Campaign, inputs: Mapping[str, Any], samples: Sequence[dict[str, Any]],
                       sample_id: str | None) -> list[str]:
    pool = spec.space.pool
    assert pool is not None
    table = pool_inputs(pool.dataset, tuple(pool.inputs))
    row, nearest = find_row(table, inputs)
    if row is None:
        near = ", ".join(f"{k}={v:g}" for k, v in table.iloc[nearest].items())
        return [f"no row of {pool.dataset.name} has these inputs (the design space is its rows); "
                f"the nearest is row {nearest}: {near}"]
    taken = next((s["id"] for s in samples if s["pool_index"] == row and s["id"] != sample_id
                  and s["state"] != "rejected"), None)
    return [f"row {row} of {pool.dataset.name} is already sample {taken}"] if taken else []


def check(store: Store, spec: Campaign, commands: Sequence[OperatorCommand]) -> list[str]:
    """Every problem of posting these commands together (also: a decision already waiting in the inbox,
    two decisions on one sample); empty when they can all be posted."""
    samples, waiting = store.samples(), posted_decisions(store)
    found: list[str] = []
    decided: set[str] = set()
    for command in commands:
        found += problems(command, samples, spec)
        if command.sample_id in waiting:
            found.append(f"sample {command.sample_id} already has a {waiting[command.sample_id]} decision "
                         "waiting for the conductor")
        if command.sample_id is not None:
            if command.sample_id in decided:
                found.append(f"sample {command.sample_id} is given two decisions at once")
            decided.add(command.sample_id)
    return list(dict.fromkeys(found))


def post(store: Store, spec: Campaign, commands: Sequence[OperatorCommand]) -> list[int]:
    """Post every command, or none if any has a problem; the inbox ids, for `withdraw`."""
    found = check(store, spec, commands)
    if found:
        raise AthanorError("; ".join(found))
    return [store.post_command(command.model_dump(mode="json", exclude_none=True)) for command in commands]


def withdraw(store: Store, command_ids: Sequence[int], user: str | Operator) -> tuple[list[dict[str, Any]], list[str]]:
    """Take back posted commands the conductor has not taken up yet: what was withdrawn, and why the
    rest was not. A command already taken up stands (reject or edit what it started instead)."""
    who = as_operator(user)
    if not who.can_decide:
        raise AthanorError(f"{who.name} is a {who.role}: viewers read, only operators decide")
    queued = {c["command_id"]: c for c in store.queued_commands()}
    withdrawn, problems = [], []
    for command_id in dict.fromkeys(command_ids):
        command = queued.get(command_id)
        if command is None or not store.withdraw(command_id, who.name):
            problems.append(f"command {command_id} is not waiting: it was carried out, is being carried out, "
                            "or never was")
        else:
            withdrawn.append(command)
    return withdrawn, problems


def posted_decisions(store: Store) -> dict[str, str]:
    """Decisions in the inbox that the conductor has not carried out yet: sample id -> action."""
    return {c["sample_id"]: c["action"] for _, c in store.pending_commands()
            if isinstance(c, dict) and c.get("action") in ("approve", "reject", "edit") and c.get("sample_id")}


@dataclass(frozen=True)
class Operator:
    """Who posts a command: the name they go by, the process's login, whether a token vouches for
    the name, and their role (viewers read, only operators decide)."""

    name: str
    login: str | None = None
    authenticated: bool = False
    role: str = "operator"

    @property
    def can_decide(self) -> bool:
        return self.role == "operator"

    def fields(self) -> dict[str, Any]:
        return {"user": self.name, "login": self.login, "authenticated": self.authenticated}


def local_operator(explicit: str | None = None, spec: Campaign | None = None) -> Operator:
    """Who a command line speaks for: the holder of ATHANOR_TOKEN when it is set (`athanor users`),
    else the name it was given (--user, ATHANOR_USER, the campaign's operator) beside the login name."""
    token = os.environ.get("ATHANOR_TOKEN")
    if not token:
        return Operator(current_user(explicit, spec), login=login_name())
    from athanor.users import Users

    user = Users().authenticate(token)
    if user is None:
        raise AthanorError("ATHANOR_TOKEN is not a valid token (unknown or revoked): see `athanor users list`")
    if explicit and explicit != user.name:
        raise AthanorError(f"--user {explicit} is not the holder of ATHANOR_TOKEN ({user.name})")
    return Operator(user.name, login=login_name(), authenticated=True, role=user.role)


def as_operator(user: str | Operator) -> Operator:
    return user if isinstance(user, Operator) else Operator(user, login=login_name())


def decisions(sample_ids: Sequence[str], approve: bool, user: str | Operator, reason: str = "",
              channel: str = "cli", transcript: Mapping[str, Any] | None = None) -> list[OperatorCommand]:
    if not sample_ids:
        raise AthanorError("name at least one sample")
    return [_command(user, action="approve" if approve else "reject", channel=channel, sample_id=i, reason=reason,
                     transcript=transcript) for i in dict.fromkeys(sample_ids)]


def edit_command(store: Store, sample_id: str, changes: Mapping[str, Any], user: str | Operator, reason: str = "",
                 channel: str = "cli", transcript: Mapping[str, Any] | None = None) -> OperatorCommand:
    """A revision: the sample's inputs with these changes, the complete new inputs in the command."""
    sample = store.sample(sample_id)
    if sample is None:
        raise AthanorError(f"no sample {sample_id!r} in this campaign")
    return _command(user, action="edit", channel=channel, sample_id=sample_id, reason=reason,
                    inputs={**sample["inputs"], **changes}, transcript=transcript)


def control_command(action: str, user: str | Operator, channel: str = "cli", batch_size: int | None = None,
                    transcript: Mapping[str, Any] | None = None, instrument: str | None = None) -> OperatorCommand:
    return _command(user, action=action, channel=channel, batch_size=batch_size, transcript=transcript,
                    instrument=instrument)


def decide(store: Store, spec: Campaign, sample_ids: Sequence[str], approve: bool, user: str | Operator,
           reason: str = "", channel: str = "cli", transcript: Mapping[str, Any] | None = None) -> list[str]:
    """Approve or reject every sample, or none if any is not awaiting approval."""
    posted = decisions(sample_ids, approve, user, reason, channel, transcript)
    post(store, spec, posted)
    return [c.sample_id for c in posted]


def edit(store: Store, spec: Campaign, sample_id: str, changes: Mapping[str, Any], user: str | Operator,
         reason: str = "", channel: str = "cli", transcript: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Revise a proposal: these inputs instead of the designer's. The revised proposal is planned again
    and judged again by the campaign's policy (so its new recipe is shown and checked); returns the
    complete new inputs."""
    command = edit_command(store, sample_id, changes, user, reason, channel, transcript)
    post(store, spec, [command])
    return dict(command.inputs or {})


def control(store: Store, spec: Campaign, action: str, user: str | Operator, channel: str = "cli",
            batch_size: int | None = None, transcript: Mapping[str, Any] | None = None,
            instrument: str | None = None) -> None:
    """Pause, resume, set the batch size of the campaign, or put an instrument back in service."""
    post(store, spec, [control_command(action, user, channel, batch_size, transcript, instrument)])


def describe(exc: ValidationError) -> str:
    """A validation error as one line: every field with its problem."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'command'}: {e['msg']}" for e in exc.errors())


def _command(user: str | Operator, **fields: Any) -> OperatorCommand:
    who = as_operator(user)
    if not who.can_decide:
        raise AthanorError(f"{who.name} is a {who.role}: viewers read, only operators decide")
    try:
        return OperatorCommand(**who.fields(), **fields)
    except ValidationError as exc:
        raise AthanorError(f"malformed command: {describe(exc)}") from None
