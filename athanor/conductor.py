"""The conductor: drives every sample through its lifecycle, keeping the instruments busy.

An asyncio loop in the driver process. It asks the designer for a new batch while earlier batches are
still in the lab (passing them as pending points), pushes each approved sample through plan →
synthesize → characterize → learn as its own task, and carries out operators' commands from the inbox
(approve, reject, edit; pause and resume; the batch size). Under a policy that asks, a proposal is
planned first, so its recipe (cost, hazards) is shown and judged, and proposals waiting for an
operator never hold up the lab: approved work runs, and the designer is asked for more while fewer
than `approval.max_waiting` wait.

It alone appends to the log, and it keeps the campaign's state in memory (built from the store at
start, updated from what each append changed), so a loop turn costs the same at the ten-thousandth
sample as at the first: it reads the store again only for the inbox. Agents that need history get
each finished sample once (`Feeds`), never the whole campaign per call.

Instruments: several per role form a pool, the campaign's own or a lab's shared with other campaigns
(athanor/dispatch.py). A step goes to an instrument of its role in service, an idle one first; an
instrument holds at most `QUEUE_DEPTH` steps (the one it runs and the next, which starts the moment the
first ends: the lab does not wait on the conductor's turnaround), and runs them one at a time. An
instrument that does not answer, or is lost mid-step, `quarantine_after` times in a row is taken out of
service until an operator restores it.

Exactly once at the instrument: the step's intent is logged when the step is handed to the
instrument. The instrument writes its run's documents into the store as they
are emitted, so on resume every begun step is reconciled (`_reconcile`): a finished run's result is
recovered from its documents, a step never begun is dispatched, and one begun but never finished is
*interrupted*: the instrument's `on_interrupted` policy retries it under a new key, fails the sample,
or asks an operator.

Determinism: batch `b` is designed from the samples of batches ≤ b − parallel_batches only, and only
once those are finished, so the same seed gives the same campaign however the steps interleave.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Awaitable, Callable

from pydantic import ValidationError

from athanor.approval import rule_failures
from athanor.commands import OperatorCommand, describe, pool_row, problems
from athanor.feeds import Feeds, observation
from athanor.documents import run_outcome
from athanor.dispatch import QUEUE_DEPTH, PoolDispatch  # noqa: F401 -- QUEUE_DEPTH: what tests and benchmarks read
from athanor.recovery import interrupt, judge, quarantined, reconcile
from athanor.lease import HEARTBEAT_S
from athanor.messages import (
    ApprovalDecision,
    ApprovalRequest,
    CampaignEvent,
    CharacterizationRequest,
    DesignProposal,
    DesignRequest,
    Fault,
    Message,
    ModelUpdate,
    StepIntent,
    SynthesisRequest,
    parse_message,
    to_wire,
)
from athanor.runtime import Agents, error_line
from athanor.spec import Campaign
from athanor.lifecycle import TERMINAL
from athanor.store import Store

ACTIVE = ("approved", "planned", "synthesized", "characterized")
POLL_S = 0.25  # how often the inbox is read while nothing else happens
HEAVY = ("recipe", "product", "candidate", "uncertainties")  # what no one needs of a finished sample


class Conductor:
    def __init__(self, spec: Campaign, store: Store, agents: Agents | None, previous_wall_s: float = 0.0,
                 on_progress: Callable[[dict[str, int]], None] | None = None):
        self.spec = spec
        self.store = store
        self.agents = agents
        self.sender = "conductor"
        self.previous_wall_s = previous_wall_s
        self.on_progress = on_progress
        self.stop_reason: str | None = None
        self.status_if_stopped = "completed"
        self._started = time.monotonic()
        self._asked: dict[str, float] = {}  # sample id -> when its approval request was logged
        self.paused = False
        self._paused_since = time.monotonic()
        self.batch_size = spec.batch_size
        self._beat = 0.0
        # Instruments: the campaign's own pool, or a lab's scheduler (athanor/dispatch.py).
        self.quarantined: dict[str, str] = {}  # instrument -> why it is out of service
        self.lost_in_a_row: Counter[str] = Counter()
        lab = agents.dispatch if agents is not None else None
        self.dispatch = lab or PoolDispatch(spec, agents.instruments if agents is not None else {}, self.quarantined)
        # The campaign in memory: every sample, the ones not finished, and running tallies.
        self.samples: dict[str, dict[str, Any]] = {}
        self.open: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.used = 0  # budget slots taken
        self.claimed: dict[int, str] = {}  # pool row -> the sample measuring it
        self.intents: dict[tuple[str, str], StepIntent] = {}  # the latest intent of each step begun, if unfinished
        self.feeds = Feeds(self.samples, self.open, store.samples)
        for sample in store.samples():
            self._remember(sample)
        self.interrupted_keys: set[str] = set()  # steps judged interrupted: their next attempt has a new key

    # --- the campaign in memory ---------------------------------------------------------------
    def _remember(self, sample: dict[str, Any]) -> None:
        old = self.samples.get(sample["id"])
        if old is not None:
            self.counts[old["state"]] -= 1
            self.counts["awaiting"] -= old["awaiting_approval"]
            self.used -= _uses_budget(old)
            if old["pool_index"] is not None and self.claimed.get(old["pool_index"]) == old["id"]:
                del self.claimed[old["pool_index"]]
        self.samples[sample["id"]] = sample
        self.counts[sample["state"]] += 1
        self.counts["awaiting"] += sample["awaiting_approval"]
        self.used += _uses_budget(sample)
        if sample["pool_index"] is not None and sample["state"] != "rejected":
            self.claimed[sample["pool_index"]] = sample["id"]
        self.feeds.saw(sample, old)
        if sample["state"] in TERMINAL and not sample["awaiting_approval"]:
            self.open.pop(sample["id"], None)
            for step in ("synthesize", "characterize"):
                self.intents.pop((sample["id"], step), None)
            # A finished sample is kept without its recipe, product and candidate: memory stays small.
            self.samples[sample["id"]] = {k: v for k, v in sample.items() if k not in HEAVY}
        else:
            self.open[sample["id"]] = sample

    def _log(self, *messages: Message) -> None:
        """Append to the log (several messages: in one transaction) and remember what changed."""
        for sample in self.store.append_all(messages):
            self._remember(sample)

    def progress(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> str:
        resumed = self.store.count_events("campaign_event") > 0
        controls = self.store.controls()  # what operators set in earlier sessions still holds
        self.paused, self.batch_size = controls["paused"], controls["batch_size"] or self.spec.batch_size
        self._log(CampaignEvent(**self._env(), event="resumed" if resumed else "started",
                                detail={"budget": self.spec.budget.experiments,
                                        "approval": self.spec.approval.policy}))
        self.intents = self.store.last_intents(list(self.open))
        self.quarantined.update(quarantined(self.store.events(kind="campaign_event")))
        self.interrupted_keys = {e.idempotency_key for e in self.store.events(kind="step_interrupted")}
        if resumed:
            await reconcile(self)
        tasks: dict[str, asyncio.Task[None]] = {}
        design: asyncio.Task[None] | None = None
        while True:
            self._heartbeat()
            self._consume_inbox()
            self._apply_policy()
            if self.on_progress:
                self.on_progress(self.progress())
            self._check_wall_time()
            for s in list(self.open.values()):
                if s["id"] not in tasks and self._step(s) is not None:
                    tasks[s["id"]] = asyncio.create_task(self._advance(s["id"]))
            if design is None and self._may_design():
                design = asyncio.create_task(self._design())
            if design is None and not tasks and self._finished():
                break
            waiting = [*tasks.values(), *([design] if design else [])]
            if waiting:
                await asyncio.wait(waiting, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(POLL_S)
            for sample_id in [k for k, t in tasks.items() if t.done()]:
                tasks.pop(sample_id).result()  # a bug in the conductor itself should not pass silently
            if design is not None and design.done():
                design.result()
                design = None
        status = self.status_if_stopped if self.stop_reason else "completed"
        self._log(CampaignEvent(**self._env(), event="ended", status=status,
                                detail={"reason": self.stop_reason or "budget met"}))
        return status

    def _heartbeat(self) -> None:
        if self.store.lease_holder is not None and time.monotonic() - self._beat > HEARTBEAT_S:
            self.store.heartbeat()
            self._beat = time.monotonic()

    def elapsed(self) -> float:
        return self.previous_wall_s + time.monotonic() - self._started

    def _check_wall_time(self) -> None:
        limit = self.spec.budget.wall_time_s
        if limit is not None and self.stop_reason is None and self.elapsed() > limit:
            self.stop_reason, self.status_if_stopped = f"wall-time budget of {limit:g} s spent", "stopped"

    def _may_design(self) -> bool:
        if self.stop_reason or self.paused or self.used >= self.spec.budget.experiments:
            return False
        q, lag = self.batch_size, self.spec.parallel_batches
        undecided = sum(s["state"] == "proposed" for s in self.open.values())  # waiting, or planned to be judged
        in_lab = sum(s["state"] not in TERMINAL for s in self.open.values()) - undecided
        if in_lab >= q * lag or undecided >= (self.spec.approval.max_waiting or q * lag):
            return False
        batch = self.feeds.next_batch
        return all(s["state"] in TERMINAL or s["awaiting_approval"] for s in self.open.values()
                   if s["batch"] <= batch - lag)

    def _finished(self) -> bool:
        if any(s["state"] in ACTIVE and not s["awaiting_approval"] for s in self.open.values()):
            return False
        if self.stop_reason:
            return True
        waiting = any(s["state"] == "proposed" or s["awaiting_approval"] for s in self.open.values())
        return not waiting and self.used >= self.spec.budget.experiments

    # --- design and approval ----------------------------------------------------------------
    async def _design(self) -> None:
        batch = self.feeds.next_batch
        cutoff = batch - self.spec.parallel_batches
        known, pending = self.feeds.design_history(cutoff)
        n = min(self.batch_size, self.spec.budget.experiments - self.used)
        request = DesignRequest(**self._env(), n=n, batch=batch, history_through_batch=cutoff, n_history=known,
                                pending_ids=[s["id"] for s in pending])
        self._log(request)
        observations = [observation(s) for s in pending]
        reply = await self._call("design", None, lambda feed: self.agents.designer.propose.remote(
            to_wire(request), feed, observations), feed="designer")
        if self.stop_reason:  # the campaign stopped while the designer worked: nothing new goes in
            return
        if not isinstance(reply, DesignProposal):
            self._log(reply if isinstance(reply, Fault) else Fault(
                **self._env(), step="design", error=f"designer answered {reply.kind}", fatal_for_sample=False))
            self.stop_reason, self.status_if_stopped = "the designer failed", "failed"
            return
        self._register(reply)

    def _register(self, proposal: DesignProposal) -> None:
        claimed = set(self.claimed)  # current: an operator's edit that claimed a row went through memory
        candidates = []
        for c in proposal.candidates:
            if c.pool_index is not None and c.pool_index in claimed:  # a pool row is measured at most once
                self._log(Fault(**self._env(), step="design", fatal_for_sample=False,
                                error=f"designer proposed pool row {c.pool_index} again; dropped"))
                continue
            claimed.add(c.pool_index)
            candidates.append(c.model_copy(update={"sample_id": f"S{len(self.samples) + len(candidates) + 1:04d}"}))
        if not candidates:
            self.stop_reason, self.status_if_stopped = "the design space is exhausted", "exhausted"
            return
        proposal = proposal.model_copy(update={"candidates": candidates})
        decisions = [ApprovalDecision(**self._env(c.sample_id, proposal.id), approved=True, decided_by="policy:auto",
                                      channel="policy") for c in candidates if self.spec.approval.policy == "auto"]
        self._log(proposal, *decisions)

    def _apply_policy(self) -> None:
        """Decide, or ask, for every proposal not yet handled: also those a crash left undecided."""
        approval = self.spec.approval
        for s in [x for x in self.open.values() if x["state"] == "proposed"]:
            if approval.policy != "auto" and (s["awaiting_approval"] or not s["recipe"]):
                continue
            env = self._env(s["id"], s["candidate"].get("proposal_id"))
            if approval.policy == "auto":
                self._log(ApprovalDecision(**env, approved=True, decided_by="policy:auto", channel="policy"))
                continue
            reasons = ["every proposal waits for an operator"]
            if s["candidate"].get("edited_from"):
                reasons = ["revised by an operator: the revised candidate and its new recipe wait for approval"]
            if approval.policy == "rules":
                seen = [x for x in self.samples.values() if x["batch"] <= s["batch"] - self.spec.parallel_batches]
                reasons = rule_failures(s["candidate"], seen, approval.rules, self.spec.objectives[0].name, s["recipe"])
                if not reasons:
                    self._log(ApprovalDecision(**env, approved=True, decided_by="policy:rules", channel="policy",
                                               reason="inside every rule of the campaign's approval policy"))
                    continue
            self._log(ApprovalRequest(**env, policy=approval.policy, reason="; ".join(reasons)))
            self._asked[s["id"]] = time.monotonic()
        self._expire()

    def _expire(self) -> bool:
        """Apply the policy's default to proposals that waited longer than its timeout (the clock
        starts when the request is logged, or when this session began for older requests). An
        interrupted step waits for an operator however long it takes."""
        timeout = self.spec.approval.timeout_s
        if timeout is None or self.paused:  # a paused campaign has an operator's attention
            return False
        now, expired = time.monotonic(), False
        for s in [x for x in self.open.values() if x["state"] == "proposed" and x["awaiting_approval"]]:
            if now - self._asked.setdefault(s["id"], now) > timeout:
                expired = True
                self._log(ApprovalDecision(
                    **self._env(s["id"]), approved=self.spec.approval.default == "approve",
                    decided_by="policy:timeout", channel="policy",
                    reason=f"no operator decision within {timeout:g} s"))
        return expired

    def _consume_inbox(self) -> None:
        # A command is marked consumed only once what it did is logged: a crash in between delivers it
        # again, and a repeated decision is ignored because the sample no longer waits.
        for command_id, raw in self.store.pending_commands():
            if self.store.claim(command_id):  # else an operator withdrew it just now
                self._carry_out(raw)
            self.store.consume(command_id)

    def _carry_out(self, raw: Any) -> None:
        try:
            command = OperatorCommand.model_validate(raw)
            found = problems(command, list(self.samples.values()), self.spec)
        except Exception as exc:  # noqa: BLE001 -- a bad command is refused; it must not stop the lab, or come back
            why = describe(exc) if isinstance(exc, ValidationError) else error_line(exc)
            what = "malformed command" if isinstance(exc, ValidationError) else "cannot check the command"
            command, found = None, [f"{what} {str(raw)[:300]}: {why}"]
        if command is None or found:
            fields = raw if isinstance(raw, dict) else {}
            sample_id = command.sample_id if command is not None and command.sample_id in self.samples else None
            self._log(Fault(**self._env(sample_id), step="operator", fatal_for_sample=False,
                            error=f"ignored {str(fields.get('action'))[:40]!r} from {str(fields.get('user'))[:100]!r}: "
                                  f"{'; '.join(found)}"))
            return
        transcript = command.transcript.model_dump() if command.transcript else {}
        if command.action in ("approve", "reject", "edit"):
            edit = command.action == "edit"
            self._log(ApprovalDecision(**self._env(command.sample_id), approved=command.action != "reject",
                                       decided_by=command.user, channel=command.channel, reason=command.reason,
                                       edited_inputs=command.inputs if edit else None,
                                       edited_pool_index=pool_row(self.spec, command.inputs or {}) if edit else None,
                                       transcript=transcript, login=command.login,
                                       authenticated=command.authenticated))
            return
        detail: dict[str, Any] = {"by": command.user, "channel": command.channel, "transcript": transcript,
                                  "login": command.login, "authenticated": command.authenticated}
        if command.action == "restore":
            self.quarantined.pop(command.instrument, None)
            self.lost_in_a_row[command.instrument] = 0
            asyncio.get_running_loop().create_task(self.dispatch.restore(command.instrument))
            self._log(CampaignEvent(**self._env(), event="instrument_restored",
                                    detail={**detail, "instrument": command.instrument}))
            return
        if command.action == "batch_size":
            self.batch_size = detail["batch_size"] = command.batch_size
            event = "batch_size_set"
        else:
            if self.paused and command.action == "resume":  # time paused does not count toward approval timeouts
                held = time.monotonic() - self._paused_since
                self._asked = {k: v + held for k, v in self._asked.items()}
            if command.action == "pause" and not self.paused:
                self._paused_since = time.monotonic()
            self.paused = command.action == "pause"
            event = "paused" if self.paused else "unpaused"
        self._log(CampaignEvent(**self._env(), event=event, detail=detail))

    # --- one sample through the lab ---------------------------------------------------------
    def _step(self, s: dict[str, Any]) -> Callable[[dict[str, Any]], Awaitable[None]] | None:
        """The next step of a sample, if the conductor takes it on its own."""
        if s["awaiting_approval"]:  # a proposal, or an interrupted step, waits for an operator
            return None
        if s["state"] == "proposed":  # under a policy that asks, planned before it is judged
            asks = self.spec.approval.policy != "auto"
            return self._plan if asks and not s["recipe"] and not self.stop_reason else None
        return {"approved": self._plan, "planned": self._synthesize,
                "synthesized": self._characterize, "characterized": self._learn}.get(s["state"])

    async def _advance(self, sample_id: str) -> None:
        sample = self.samples.get(sample_id)
        while sample is not None and (step := self._step(sample)) is not None:
            if self.paused:  # steps under way finish; no new one starts
                await asyncio.sleep(POLL_S)
            else:
                await step(sample)
            sample = self.samples.get(sample_id)

    async def _plan(self, s: dict[str, Any]) -> None:
        # The same lag rule as design: only batches certainly finished, so a seed replays the campaign.
        through = s["batch"] - self.spec.parallel_batches
        request = SynthesisRequest(**self._env(s["id"]), inputs=s["inputs"], pool_index=s["pool_index"],
                                   history_through_batch=through)
        reply = await self._call("plan", s["id"], lambda feed: self.agents.planner.plan.remote(to_wire(request), feed),
                                 feed="planner")
        self._log(request, reply)  # planning is replayed after a crash: the request need not go first

    async def _synthesize(self, s: dict[str, Any]) -> None:
        async with self.dispatch.slot("synthesis", s["id"], "synthesize") as slot:
            key = self._intent(s["id"], "synthesize", slot.name)
            raw = await self._call_raw("synthesize", s["id"], lambda: slot.run(s["recipe"], key))
        if not await self._reached(s, "synthesize", slot.name, raw):
            return
        self._log(self._checked(raw["message"], "synthesize", s["id"]))

    async def _characterize(self, s: dict[str, Any]) -> None:
        async with self.dispatch.slot("characterization", s["id"], "characterize") as slot:
            request = CharacterizationRequest(**self._env(s["id"]), product=s["product"], probe=slot.name)
            key = self._intent(s["id"], "characterize", slot.name, request)
            raw = await self._call_raw("characterize", s["id"], lambda: slot.run(to_wire(request), key))
        name = slot.name
        if not await self._reached(s, "characterize", name, raw):
            return
        if raw["message"] is not None:  # the probe itself failed
            self._log(self._checked(raw["message"], "characterize", s["id"]))
            return
        await self._interpret(s["id"], request.id, name, raw["documents"], raw["duration_s"])

    async def _reached(self, s: dict[str, Any], step: str, name: str, raw: Any) -> bool:
        """Whether the instrument's reply is a step's outcome. If it did not answer, the step goes back to
        wait for an instrument; if it was lost mid-step (the control system lost it, or its node was
        lost), the step is judged from the documents its run stored, as after a crash: recovered if the
        run finished, else interrupted (its `on_interrupted` policy decides). Either counts toward taking
        the instrument out of service; a lab takes an instrument whose node was lost out at once."""
        if isinstance(raw, Fault):
            self._log(raw)
            return False
        lost = raw.get("lost")
        if lost is None and raw.get("unavailable") is None:
            self.lost_in_a_row[name] = 0
            return True
        self.lost_in_a_row[name] += 1
        if lost is not None:
            intent = self.intents[(s["id"], step)]
            outcome = run_outcome(raw["documents"] or self.store.step_documents(intent.idempotency_key))
            if outcome.state in ("finished", "never_started"):  # done after all, or never begun: as on resume
                await judge(self, s, step, intent, outcome, lost)
            else:  # a run the instrument closed as failed when it lost control is still an interruption
                interrupt(self, s, step, intent, outcome, lost)
        else:
            self._log(CampaignEvent(**self._env(s["id"]), event="instrument_unavailable",
                                    detail={"instrument": name, "step": step, "reason": raw["unavailable"]}))
        limit = self.spec.instrument_named(name).quarantine_after
        if (raw.get("quarantined") or self.lost_in_a_row[name] >= limit) and name not in self.quarantined:
            n = self.lost_in_a_row[name]
            why = raw.get("quarantined") or f"{n} step{'s' if n > 1 else ''} lost in a row; last: {lost or raw['unavailable']}"
            self.quarantined[name] = why
            self._log(CampaignEvent(**self._env(), event="instrument_quarantined",
                                    detail={"instrument": name, "reason": why}))
            await self.dispatch.quarantine(name, why)
        return False

    async def _interpret(self, sample_id: str, causation_id: str | None, instrument: str, documents: Any,
                         duration_s: float) -> None:
        self._log(await self._call("characterize", sample_id, lambda: self.agents.characterizer.interpret.remote(
            sample_id, causation_id, instrument, documents, duration_s)))

    async def _learn(self, s: dict[str, Any]) -> None:
        final = self.used >= self.spec.budget.experiments and all(
            x["state"] in ("characterized", "learned", "failed", "rejected") for x in self.open.values())
        reply = await self._call("learn", s["id"], lambda feed: self.agents.learner.update.remote(
            s["id"], None, feed, final), feed="learner")
        if isinstance(reply, Fault):  # the measurement stands; only the model update is missing
            self._log(reply.model_copy(update={"fatal_for_sample": False}))
            reply = ModelUpdate(**self._env(s["id"]), model_version="unavailable", n_train=0,
                                reason=f"learner failed: {reply.error}")
        self._log(reply)
        if isinstance(reply, ModelUpdate) and reply.recommend_stop and not self.stop_reason:
            stalled = reply.reason.startswith("improvement stalled")
            self.stop_reason, self.status_if_stopped = reply.reason, "stalled" if stalled else "target_met"

    # --- plumbing ---------------------------------------------------------------------------
    def _env(self, sample_id: str | None = None, causation_id: str | None = None) -> dict[str, Any]:
        return {"campaign_id": self.store.campaign_id, "sample_id": sample_id,
                "causation_id": causation_id, "sender": self.sender}

    @property
    def steps_handed(self) -> Counter[str]:
        """Instrument -> steps handed to it this session."""
        return self.dispatch.steps_handed

    def _intent(self, sample_id: str, step: str, target: str, *before: Message) -> str:
        """Log that `target` begins `step` now (after `before`, in the same transaction); its key."""
        earlier = self.intents.get((sample_id, step))
        attempt = 1 if earlier is None else earlier.attempt + (earlier.idempotency_key in self.interrupted_keys)
        key = f"{self.store.campaign_id}:{sample_id}:{step}" + (f":{attempt}" if attempt > 1 else "")
        intent = StepIntent(**self._env(sample_id), step=step, idempotency_key=key, target=target, attempt=attempt)
        self._log(*before, intent)
        self.intents[(sample_id, step)] = intent
        return key

    async def _call_raw(self, step: str, sample_id: str | None, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call()
        except Exception as exc:  # noqa: BLE001 -- a crashed actor fails the step, not the campaign
            return Fault(**self._env(sample_id), step=step, error=error_line(exc))

    async def _call(self, step: str, sample_id: str | None, call: Callable[..., Awaitable[Any]],
                    feed: str | None = None) -> Message:
        if feed is None:
            raw = await self._call_raw(step, sample_id, call)
        else:  # the agent's history: what is new since the last call, or all of it for an agent that lost count
            raw = await self._call_raw(step, sample_id, lambda: call(self.feeds.next(feed)))
            if isinstance(raw, dict) and raw.get("resync"):
                raw = await self._call_raw(step, sample_id, lambda: call(self.feeds.everything(feed)))
        return raw if isinstance(raw, Fault) else self._checked(raw, step, sample_id)

    def _checked(self, wire: Any, step: str, sample_id: str | None) -> Message:
        """Validate a reply; a malformed one, or one about another sample, becomes a Fault."""
        try:
            message = parse_message(wire)
        except (ValidationError, TypeError) as exc:
            return Fault(**self._env(sample_id), step=step, error=f"malformed reply: {error_line(exc)}")
        if message.sample_id != sample_id:
            if isinstance(message, Fault):
                return message.model_copy(update={"sample_id": sample_id})
            return Fault(**self._env(sample_id), step=step,
                         error=f"reply about sample {message.sample_id}, expected {sample_id}")
        return message


def _uses_budget(sample: dict[str, Any]) -> bool:
    # An operator's rejection frees its slot; a timeout's does not, or an unattended campaign would
    # propose for ever.
    return sample["state"] != "rejected" or (sample["error"] or "").startswith("rejected by policy:")
