"""The built-in chat model: deterministic, offline, no API key.

It maps an operator's message through the grammar of `athanor.chat_grammar` onto the same tool
calls a hosted model would make, or refuses the whole message; once the tools have answered, it
replies with their results as plain text.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from athanor.chat_grammar import parse

HELP = """I understand exactly these, and nothing else (a message I cannot read completely changes nothing):
  status | pending                     the campaign's state | the candidates awaiting approval
  why 7 | explain 7 and 8              prediction, acquisition value, neighbours, recipe of a candidate
  approve 3 and 5 | approve 2 to 4     approve candidates (ids as 3, S0003 or #3; ranges with 'to' or '-')
  approve all | approve all except 2   every candidate awaiting approval (but not 2)
  approve 5 to 8, skip 6               skip, hold off on, don't approve: leave a candidate waiting
  reject 4: too much Pb                reject, with a reason (it runs to the end, or to a ';')
  edit 3 Sr=0.5 Ba=0.5 because ...     revise a candidate's inputs (checked against the design space;
                                       quote names with spaces: edit 3 "P3HT content (%)"=20): it is
                                       planned again and waits for approval again; it is not approved
  pause | unpause | batch size 2       stop starting new steps | carry on | candidates per request
  undo                                 take back what I last carried out, if the conductor has not yet
Several commands go in one message, separated by ';' or ','. Conditions ("if its cost is low") are not
understood. Before acting on more than one candidate I list them and wait for your 'yes'."""

STAGED = "staged:"  # a tool result saying what waits to be carried out when the message is done
NOT_UNDERSTOOD = "athanor_not_understood"  # marks a reply of the built-in model that understood nothing


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
                if not str(m.content).startswith(STAGED):  # the session reports what it carries out
                    results.append(str(m.content))
            return AIMessage(content="\n".join(reversed(results)))
        human = next((m for m in reversed(messages) if isinstance(m, HumanMessage)), None)
        parsed = parse(str(human.content) if human is not None else "")
        if parsed.problem is not None:
            return AIMessage(content=f"Nothing was done: {parsed.problem}. (Type 'help' for what I understand.)",
                             additional_kwargs={NOT_UNDERSTOOD: True})
        if not parsed.calls:
            return AIMessage(content=HELP)
        return AIMessage(content="", tool_calls=parsed.calls)


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
