"""The built-in chat model: deterministic, offline, no API key.

It turns plain commands into the same tool calls a hosted model would make ("approve 3 and 5",
"approve all pending", "reject 4: too much Pb", "why 7?", "edit 3 Sr=0.5 Ba=0.5", "status",
"pending", "pause", "resume", "batch size 2") and, once the tools have answered, replies with their
results as plain text.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Any, Mapping, Sequence

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

HELP = """I understand:
  status                      the campaign's state
  pending | list              candidates awaiting approval
  why 7? | explain 7          prediction, acquisition value, neighbours, recipe of a candidate
  approve 3 and 5             approve candidates (ids as S0003 or 3)
  approve all pending         approve every candidate awaiting approval
  reject 4: too much Pb       reject a candidate, with a reason
  edit 3 Sr=0.5 Ba=0.5        change inputs of a candidate and approve it (checked against the design space;
                              quote names with spaces: edit 3 "P3HT content (%)"=20)
  pause | resume              stop starting new steps | carry on
  batch size 2                how many candidates the designer proposes at a time"""

_ID = re.compile(r"\b[Ss]?\d+\b")
_counter = itertools.count(1)


def _call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{next(_counter)}", "type": "tool_call"}


def _value(raw: str) -> Any:
    try:
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        return raw


def parse_command(text: str) -> list[dict[str, Any]] | None:
    """The tool calls a plain command stands for, or None when it is not one."""
    text = text.strip()
    low = text.lower().rstrip("?.! ")
    if re.fullmatch(r"(show )?(the )?status", low):
        return [_call("status")]
    if re.fullmatch(r"(list|pending|list pending|show pending|what is pending|what's pending)", low):
        return [_call("list_pending")]
    if re.fullmatch(r"pause( the campaign)?", low):
        return [_call("pause")]
    if re.fullmatch(r"(resume|unpause|continue)( the campaign)?", low):
        return [_call("resume")]
    match = re.fullmatch(r"(?:set )?(?:the )?batch[ _]size\s*(?:to|=|:)?\s*(-?\d+)", low)
    if match:
        return [_call("set_batch_size", batch_size=int(match.group(1)))]
    match = re.match(r"(approve)\b(.*)", text, re.I | re.S)
    if match:
        rest = match.group(2)
        if re.search(r"\ball\b", rest, re.I):
            return [_call("approve", sample_ids=[], all_pending=True)]
        ids = _ID.findall(rest)
        return [_call("approve", sample_ids=ids)] if ids else None
    match = re.match(r"reject\s+([Ss]?\d+)\s*(?:[:,\-]|because\b|as\b)?\s*(.*)", text, re.I | re.S)
    if match:
        return [_call("reject", sample_id=match.group(1), reason=match.group(2).strip())]
    match = re.match(r"(why|explain|tell me about|what about)\b(.*)", text, re.I | re.S)
    if match:
        ids = _ID.findall(match.group(2))
        return [_call("explain", sample_id=i) for i in ids] or None
    match = re.match(r"edit\s+([Ss]?\d+)\s*:?\s*(.*)", text, re.I | re.S)
    if match:
        pairs = re.findall(r"(?:\"([^\"]+)\"|'([^']+)'|([A-Za-z_][\w.\-]*))\s*=\s*([^\s,;]+)", match.group(2))
        if pairs:
            inputs = {(dq or sq or bare): _value(v) for dq, sq, bare, v in pairs}
            return [_call("edit", sample_id=match.group(1), inputs=inputs)]
    return None


class DeterministicChatModel(BaseChatModel):
    """A LangChain chat model without a language model: plain commands in, tool calls out."""

    @property
    def _llm_type(self) -> str:
        return "athanor-deterministic"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> DeterministicChatModel:
        # The commands it knows map onto the chat's own tools; nothing to bind.
        return self

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        if messages and isinstance(messages[-1], ToolMessage):
            results = []
            for m in reversed(messages):
                if not isinstance(m, ToolMessage):
                    break
                results.append(str(m.content))
            return AIMessage(content="\n".join(reversed(results)))
        human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        calls = parse_command(str(human.content)) if human is not None else None
        if not calls:
            return AIMessage(content=HELP)
        return AIMessage(content="", tool_calls=calls)


def make_model(env: Mapping[str, str] | None = None, configured: str | None = None) -> tuple[BaseChatModel, str]:
    """The chat model and a line saying which: ATHANOR_CHAT_MODEL, else the campaign's
    `approval.chat_model` ('openai:gpt-4o-mini'), through LangChain's init_chat_model when it can be
    had; the built-in deterministic model otherwise."""
    env = os.environ if env is None else env
    name = (env.get("ATHANOR_CHAT_MODEL") or configured or "").strip()
    if not name or name in ("builtin", "deterministic"):
        return DeterministicChatModel(), "model: built-in (plain commands; type 'help')"
    try:
        from langchain.chat_models import init_chat_model

        return init_chat_model(name), f"model: {name}"
    except Exception as exc:  # noqa: BLE001 -- a missing package or key: fall back, and say why
        return DeterministicChatModel(), (f"model: built-in (chat model {name} unavailable: "
                                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
