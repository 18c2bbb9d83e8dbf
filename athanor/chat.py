"""`athanor chat DIR`: a terminal chat bound to the campaign stored in DIR, running or stopped.

A tool-calling loop over LangChain: the model (the built-in deterministic one, or any provider
through `init_chat_model` when ATHANOR_CHAT_MODEL names one) sees the campaign's tools; every tool
call's arguments are validated, and a bad call (unknown tool, unknown sample, malformed argument,
out-of-bounds edit) gets an explanatory error back, never an action. Every action goes through
`athanor.commands`, the CLI's own path, with channel "chat" and a link to the transcript (session id,
file, the operator's words). Every message of the conversation is appended to
DIR/chat-transcript.jsonl with who, when and through which channel.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field, StrictFloat, StrictInt, StrictStr, ValidationError

from athanor import commands
from athanor.chat_model import make_model
from athanor.commands import MAX_BATCH_SIZE, current_user, posted_decisions
from athanor.errors import AthanorError
from athanor.messages import utcnow
from athanor.report import decision_line, fmt, inputs_text, recipe_lines
from athanor.spec import Campaign, CategoricalParameter
from athanor.lifecycle import MEASURED
from athanor.store import Store

CHANNEL = "chat"
TRANSCRIPT = "chat-transcript.jsonl"
MAX_ROUNDS = 5
SampleRef = Union[StrictStr, StrictInt]  # strict: `true` is no sample id


class Refused(AthanorError):
    """A tool call that was understood but cannot be carried out."""


# --- argument schemas ------------------------------------------------------------------------
class _Args(BaseModel):
    model_config = {"extra": "forbid"}


class NoArgs(_Args):
    pass


class SampleArg(_Args):
    sample_id: SampleRef = Field(description="a sample id: S0003, or just 3")


class ApproveArgs(_Args):
    sample_ids: list[SampleRef] = Field(default=[], description="the samples to approve (S0003 or 3)")
    all_pending: bool = Field(default=False, description="approve every sample awaiting approval instead")


class RejectArgs(_Args):
    sample_id: SampleRef = Field(description="the sample to reject (S0003 or 3)")
    reason: str = Field(description="why it is rejected (required)")


class EditArgs(_Args):
    sample_id: SampleRef = Field(description="the sample to edit (S0003 or 3)")
    inputs: dict[str, Union[StrictFloat, StrictInt, StrictStr]] = Field(description="new values of inputs, by input name")
    reason: str = Field(default="", description="why it is edited")


class BatchSizeArgs(_Args):
    batch_size: StrictInt = Field(ge=1, le=MAX_BATCH_SIZE, description="proposals per design request from now on")


# --- the session ------------------------------------------------------------------------------
class ChatSession:
    """One operator's conversation with one stored campaign."""

    def __init__(self, store: Store, spec: Campaign, user: str, model: BaseChatModel,
                 transcript: Path | None = None, model_note: str = ""):
        self.store, self.spec, self.user, self.model, self.model_note = store, spec, user, model, model_note
        self.transcript = transcript
        self.session_id = uuid.uuid4().hex[:12]
        self._said = ""  # the operator's message being answered
        self.tools = {t.name: t for t in self._make_tools()}
        try:
            self.bound = model.bind_tools(list(self.tools.values()))
        except NotImplementedError:  # scripted test models script their own tool calls
            self.bound = model
        self.messages: list[BaseMessage] = [SystemMessage(content=self._system_prompt())]

    def _system_prompt(self) -> str:
        return (f"You help {self.user} operate the autonomous-lab campaign {self.spec.campaign!r} "
                f"({self.store.campaign_id}): {self.spec.description or 'no description'}. Inputs: "
                f"{', '.join(self.spec.space.input_names)}; objectives: {', '.join(self.spec.objective_names)}. "
                "Use the tools to look things up and to act; never invent sample ids, and act only on what "
                "the operator asked. Sample ids look like S0003.")

    # --- tools ----------------------------------------------------------------------------
    def _make_tools(self) -> list[StructuredTool]:
        def tool(fn: Callable[..., str], schema: type[BaseModel], doc: str) -> StructuredTool:
            return StructuredTool.from_function(fn, name=fn.__name__.lstrip("_"), description=doc, args_schema=schema)

        return [
            tool(self._status, NoArgs, "The campaign's state: sample counts, pending approvals, recent decisions."),
            tool(self._list_pending, NoArgs, "The candidates awaiting an operator's approval, with predictions."),
            tool(self._explain, SampleArg, "Why a candidate was proposed: prediction ± sd, acquisition value, "
                 "nearest measured neighbours, recipe and hazards."),
            tool(self._approve, ApproveArgs, "Approve candidates awaiting approval (sample_ids, or all_pending=true)."),
            tool(self._reject, RejectArgs, "Reject one candidate awaiting approval, with a reason."),
            tool(self._edit, EditArgs, "Revise a candidate awaiting approval: change some of its inputs. The new "
                 "inputs are checked against the design space; the revised candidate is planned again and judged "
                 "again by the campaign's approval policy."),
            tool(self._pause, NoArgs, "Pause the campaign: steps under way finish, nothing new starts."),
            tool(self._resume, NoArgs, "Resume a paused campaign."),
            tool(self._set_batch_size, BatchSizeArgs, "Set how many candidates the designer proposes at a time."),
        ]

    def _resolve(self, ref: SampleRef) -> dict[str, Any]:
        raw = str(ref).strip()
        sample = self.store.sample(raw)
        if sample is None and raw.lstrip("sS").isdigit():
            sample = self.store.sample(f"S{int(raw.lstrip('sS')):04d}")
        if sample is None:
            known = [s["id"] for s in self.store.samples()]
            hint = f"known samples: {known[0]} to {known[-1]}" if known else "the campaign has no samples yet"
            raise Refused(f"there is no sample {raw!r} in campaign {self.store.campaign_id} ({hint})")
        return sample

    def _link(self) -> dict[str, Any]:
        """What a decision records of the conversation that led to it."""
        return {"session": self.session_id, "file": TRANSCRIPT, "operator_message": self._said}

    def _status(self) -> str:
        samples = self.store.samples()
        counts: dict[str, int] = {}
        for s in samples:
            counts[s["state"]] = counts.get(s["state"], 0) + 1
        events = self.store.events(kind="campaign_event")
        status = events[-1].status if events and events[-1].event == "ended" else "running or interrupted"
        lines = [f"campaign {self.spec.campaign} ({self.store.campaign_id}): {status}",
                 "samples: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet")]
        waiting = [s["id"] for s in samples if s["awaiting_approval"]]
        lines.append("awaiting approval: " + (" ".join(waiting) or "none"))
        controls = self.store.controls()
        lines.append(f"{'PAUSED; ' if controls['paused'] else ''}batch size {controls['batch_size'] or self.spec.batch_size}")
        posted = posted_decisions(self.store)
        if posted:
            lines.append("decisions waiting for the conductor: " + ", ".join(f"{a} {i}" for i, a in posted.items()))
        lines += ["  " + decision_line(a) for a in self.store.approvals() if a["channel"] != "policy"][-5:]
        lines += [f"  refused: {error}" for error in self.store.refused_commands()[-3:]]
        return "\n".join(lines)

    def _prediction_text(self, candidate: dict[str, Any]) -> str:
        predicted = candidate.get("predicted") or {}
        parts = [f"{name} {fmt(p['mean'])} ± {fmt(p['sd'])}" for name, p in predicted.items()]
        return "predicted " + ", ".join(parts) if parts else "no prediction (the designer had no model yet)"

    def _list_pending(self) -> str:
        posted = posted_decisions(self.store)
        asked = self.store.waiting_reasons()
        waiting = [s for s in self.store.samples() if s["awaiting_approval"]]
        if not waiting:
            return "no candidates are awaiting approval"
        lines = []
        for s in waiting:
            note = f" [{posted[s['id']]} posted, waiting for the conductor]" if s["id"] in posted else ""
            cost = (s["recipe"] or {}).get("cost_usd")
            hazards = sorted({h for flags in ((s["recipe"] or {}).get("hazards") or {}).values() for h in flags})
            lines.append(f"{s['id']} (batch {s['batch']}): {inputs_text(s['inputs'])}; "
                         f"{self._prediction_text(s['candidate'])}"
                         + (f"; precursors ${cost:.2f}" if cost is not None else "")
                         + (f"; hazards: {', '.join(hazards)}" if hazards else "")
                         + (f"; asks because: {asked[s['id']]}" if asked.get(s["id"]) else "") + note)
        return f"{len(waiting)} awaiting approval:\n" + "\n".join(lines)

    def _neighbours(self, sample: dict[str, Any], k: int = 3) -> list[tuple[float, dict[str, Any]]]:
        spans: dict[str, float] = {p.name: float(p.high - p.low) or 1.0 for p in self.spec.space.parameters
                                   if not isinstance(p, CategoricalParameter)}

        def distance(other: dict[str, Any]) -> float:
            total = 0.0
            for name, value in sample["inputs"].items():
                theirs = other["inputs"].get(name)
                if isinstance(value, (int, float)) and isinstance(theirs, (int, float)):
                    total += ((value - theirs) / spans.get(name, 1.0)) ** 2
                else:
                    total += 0.0 if value == theirs else 1.0
            return math.sqrt(total)

        measured = [s for s in self.store.samples(MEASURED) if s["id"] != sample["id"]]
        return sorted(((distance(s), s) for s in measured), key=lambda pair: pair[0])[:k]

    def _explain(self, sample_id: SampleRef) -> str:
        s = self._resolve(sample_id)
        c = s["candidate"]
        lines = [f"{s['id']} ({s['state']}{', awaiting approval' if s['awaiting_approval'] else ''}), "
                 f"batch {s['batch']}: {inputs_text(s['inputs'])}",
                 self._prediction_text(c)]
        if c.get("acquisition_value") is not None:
            lines.append(f"acquisition value {fmt(c['acquisition_value'])}")
        if c.get("rationale"):
            lines.append(f"rationale: {c['rationale']}")
        if c.get("edited_from"):
            lines.append(f"edited by an operator from {inputs_text(c['edited_from'])} (the prediction was for those)")
        if s["values"]:
            lines.append("measured: " + inputs_text(s["values"]))
        near = self._neighbours(s)
        if near:
            lines.append("nearest measured neighbours:")
            lines += [f"  {n['id']} (distance {d:.3g}): {inputs_text(n['inputs'])} -> {inputs_text(n['values'])}"
                      for d, n in near]
        else:
            lines.append("no measured samples yet to compare with")
        lines += recipe_lines(s.get("recipe"))
        if s.get("error"):
            lines.append(f"note: {s['error']}")
        return "\n".join(lines)

    def _approve(self, sample_ids: list[SampleRef], all_pending: bool = False) -> str:
        if all_pending:
            if sample_ids:
                raise Refused("give either sample_ids or all_pending=true, not both")
            posted = posted_decisions(self.store)
            ids = [s["id"] for s in self.store.samples() if s["awaiting_approval"] and s["id"] not in posted]
            if not ids:
                return "nothing to approve: no candidate is awaiting approval"
        else:
            if not sample_ids:
                raise Refused("name the samples to approve (sample_ids), or pass all_pending=true")
            ids, problems = [], []
            for ref in sample_ids:
                try:
                    ids.append(self._resolve(ref)["id"])
                except Refused as exc:
                    problems.append(str(exc))
            if problems:
                raise Refused("nothing approved: " + "; ".join(problems))
            ids = list(dict.fromkeys(ids))
        try:
            commands.decide(self.store, self.spec, ids, True, self.user, channel=CHANNEL, transcript=self._link())
        except AthanorError as exc:
            raise Refused(f"nothing approved: {exc}") from None
        return f"approved {' '.join(ids)} as {self.user} via chat (the conductor logs the decision)"

    def _reject(self, sample_id: SampleRef, reason: str) -> str:
        if not reason.strip():
            raise Refused("a rejection needs a reason, e.g. 'reject 4: too much Pb'")
        sample = self._resolve(sample_id)
        commands.decide(self.store, self.spec, [sample["id"]], False, self.user, reason.strip(), channel=CHANNEL,
                        transcript=self._link())
        return f"rejected {sample['id']} as {self.user} via chat: {reason.strip()} (the conductor logs the decision)"

    def _edit(self, sample_id: SampleRef, inputs: dict[str, Any], reason: str = "") -> str:
        sample = self._resolve(sample_id)
        try:
            new = commands.edit(self.store, self.spec, sample["id"], inputs, self.user, reason.strip(),
                                channel=CHANNEL, transcript=self._link())
        except AthanorError as exc:
            raise Refused(f"edit of {sample['id']} refused, nothing changed: {exc}") from None
        return (f"revised {sample['id']} as {self.user} via chat: {inputs_text(new)}; it is planned again and "
                f"judged again by the '{self.spec.approval.policy}' policy (the conductor logs the decision)")

    def _pause(self) -> str:
        commands.control(self.store, self.spec, "pause", self.user, CHANNEL, transcript=self._link())
        return "pause posted: steps under way finish, nothing new starts until you resume"

    def _resume(self) -> str:
        commands.control(self.store, self.spec, "resume", self.user, CHANNEL, transcript=self._link())
        return "resume posted: the campaign carries on"

    def _set_batch_size(self, batch_size: int) -> str:
        commands.control(self.store, self.spec, "batch_size", self.user, CHANNEL, batch_size=batch_size,
                         transcript=self._link())
        return f"batch size {batch_size} posted: the designer's next requests ask for {batch_size} candidates"

    # --- the loop -------------------------------------------------------------------------
    def call_tool(self, call: Mapping[str, Any]) -> str:
        """Run one tool call; any problem comes back as an explanatory error, with nothing done."""
        name = call.get("name")
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return f"ERROR: there is no tool {name!r}; the tools are {', '.join(self.tools)}"
        args = call.get("args")
        if not isinstance(args, dict):
            return f"ERROR: the arguments of {name} must be an object, got {args!r}"
        try:
            parsed = tool.args_schema.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return f"ERROR: malformed arguments for {name}: {problems}; nothing was done"
        try:
            return tool.func(**{k: getattr(parsed, k) for k in type(parsed).model_fields})
        except AthanorError as exc:
            return f"ERROR: {exc}"

    def send(self, text: str) -> str:
        """One operator message in; the model's final answer out, after any tool calls."""
        start, self._said = len(self.messages), text
        self.messages.append(HumanMessage(content=text))
        reply = f"(stopped after {MAX_ROUNDS} rounds of tool calls without an answer)"
        try:
            for _ in range(MAX_ROUNDS):
                ai = self.bound.invoke(self.messages)
                self.messages.append(ai)
                calls = list(getattr(ai, "tool_calls", []) or [])
                bad = list(getattr(ai, "invalid_tool_calls", []) or [])
                if not calls and not bad:
                    reply = _text(ai)
                    break
                for call in calls:
                    self.messages.append(ToolMessage(content=self.call_tool(call), tool_call_id=call.get("id") or "",
                                                     name=str(call.get("name"))))
                for call in bad:
                    self.messages.append(ToolMessage(
                        content=f"ERROR: the call to {call.get('name')!r} could not be parsed ({call.get('error')}): "
                                f"{call.get('args')!r}; nothing was done",
                        tool_call_id=call.get("id") or "", name=str(call.get("name"))))
        finally:
            self._log(self.messages[start:])
        return reply

    def _log(self, messages: list[BaseMessage]) -> None:
        if self.transcript is None:
            return
        now = utcnow().isoformat()
        with self.transcript.open("a") as f:
            for m in messages:
                record = {"time": now, "session": self.session_id, "campaign_id": self.store.campaign_id,
                          "user": self.user, "channel": CHANNEL, "type": m.type, "content": m.content}
                if isinstance(m, AIMessage) and (m.tool_calls or m.invalid_tool_calls):
                    record["tool_calls"] = [{"name": c["name"], "args": c["args"], "id": c.get("id")} for c in m.tool_calls]
                    record["invalid_tool_calls"] = [dict(c) for c in m.invalid_tool_calls]
                if isinstance(m, ToolMessage):
                    record.update(tool_call_id=m.tool_call_id, name=m.name)
                f.write(json.dumps(record, default=str) + "\n")


def _text(message: BaseMessage) -> str:
    return str(message.text)  # langchain-core >= 1: a property


# --- models and entry points ----------------------------------------------------------------
def open_session(run_dir: str | Path, user: str | None = None, model: BaseChatModel | None = None) -> ChatSession:
    from athanor.campaign import open_run

    store, spec = open_run(run_dir)
    note = ""
    if model is None:
        model, note = make_model(configured=spec.approval.chat_model)
    return ChatSession(store, spec, current_user(user, spec), model, Path(run_dir) / TRANSCRIPT, note)


def chat_once(run_dir: str | Path, message: str, user: str | None = None,
              model: BaseChatModel | None = None) -> str:
    """`athanor chat DIR --message TEXT`: one message, the reply."""
    session = open_session(run_dir, user, model)
    try:
        return session.send(message)
    finally:
        session.store.close()


def chat_repl(run_dir: str | Path, user: str | None = None, model: BaseChatModel | None = None,
              stdin: Any = None, stdout: Any = None) -> int:
    """`athanor chat DIR`: read lines until EOF or 'quit', answer each."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session = open_session(run_dir, user, model)
    note = session.model_note
    print(f"chat with campaign {session.spec.campaign} ({session.store.campaign_id}) as {session.user}; "
          f"{note + '; ' if note else ''}'quit' to leave", file=stdout)
    try:
        while True:
            if stdin.isatty():
                print("> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line or line.strip().lower() in ("quit", "exit", "q"):
                return 0
            if line.strip():
                print(session.send(line.strip()), file=stdout, flush=True)
    finally:
        session.store.close()


def run_chat_command(args: Any) -> int:
    if args.message is not None:
        print(chat_once(args.dir, args.message, args.user))
        return 0
    return chat_repl(args.dir, args.user)
