"""The built-in chat model's grammar: a message maps completely onto commands, or it is refused whole.

An operator's words decide what happens to real samples, so nothing is guessed: every word of a
message must be accounted for by the grammar below, or the message changes nothing and the reply
names what was not understood. Conditions the lab cannot check ("approve 4 if its cost is low")
are refused, never dropped.

    message   := clause ((";" | "," | "and" | "then" | "but" | newline | ".") clause)*
    clause    := approve | reject | hold | edit | explain | status | pending | pause | resume
                 | batch size | help | undo
    undo      := "undo" | "withdraw" | "take that back"   (alone in its message)
    approve   := ("approve" | "accept") targets exception*
    targets   := ids | "all" ["pending" | "waiting" | "of them"] | "everything" | "every one"
    exception := ["but" | ","] ("not" | "except" | "except for" | "apart from" | "other than"
                 | "excluding" | "without") ids
               | ["but" | ","] "but" ids          (after "all" only: "approve all but 3")
               | ["but" | ","] "not all" | "not everything"   (after ids: "only these")
    reject    := ("reject" | "decline") ids (":" | "-" | "," | "because" | "since" | "as") REASON
    hold      := ("skip" | "hold" | "hold off on" | "leave" | "not" | "don't approve"
                 | "do not approve" | "don't reject" | "do not reject") ids
    edit      := "edit" ID [":"] (NAME "=" VALUE)+ [("because" | ":") REASON]
    explain   := ("why" | "explain" | "tell me about" | "what about") ids
    status    := ["show"] ["the"] "status"
    pending   := "pending" | "list" | "list pending" | "show pending" | "what's pending" | "queue"
    batch size:= ["set"] ["the"] "batch size" ["to" | "=" | ":"] INTEGER
    ids       := item (("," | "and" | "&" | "+")? item)*
    item      := ID | ID ("-" | "–" | "to" | "through" | "thru" | "..") ID
    ID        := ["S" | "s" | "#"] DIGITS          (3, S3, S0003 and #3 are all sample S0003)

Words that carry no command ("please", "also", "now", "the", "sample(s)", "proposal(s)",
"candidate(s)", "thanks") may appear between commands and ids. A REASON (reject, edit) runs to the
end of the message or the next ";", so "reject 4: too costly; approve 5" is two commands; a reason
that itself reads like a command ("reject 4: too costly, approve 5") is refused as ambiguous.

Within one message a skipped, held or rejected id is taken out of an approval ("approve 5 to 8,
skip 6" approves S0005, S0007, S0008); an id both approved by name and rejected is a contradiction
and refused. The tool calls come out in a fixed form:

    approve         {"sample_ids": [...], "all_pending": bool, "except_ids": [...]}  (one call, merged)
    reject          {"sample_ids": [...], "reason": str}
    hold            {"sample_ids": [...]}          (changes nothing: the samples stay waiting)
    edit            {"sample_id": str, "inputs": {name: value}, "reason": str}
    explain         {"sample_id": str}             (one call per id)
    status, list_pending, pause, resume, undo   {}
    set_batch_size  {"batch_size": int}

A message naming more than MAX_IDS (1000) ids, ranges included, is refused; so is a range that
runs backwards ("approve 8 to 5"). Ids come out as S followed by at least four digits. Whether an
id is actually waiting, and whether more than one proposal needs the operator's yes, is the chat
session's business, not the grammar's.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

MAX_IDS = 1000
_counter = itertools.count(1)

_TOKEN = re.compile(r"(?P<id>[Ss#]?[0-9]+)(?![0-9A-Za-z_])|(?P<word>[A-Za-z_]+(?:['’][A-Za-z]+)?)"
                    r"|(?P<sep>\.\.|[,;:&+\-–—.=?!])|(?P<space>\s+)|(?P<other>.)", re.S)
_FILLER = {"please", "also", "now", "the", "sample", "samples", "proposal", "proposals", "candidate", "candidates",
           "thanks", "ok", "okay", "number", "numbers", "id", "ids", "them", "these", "those", "just", "only", "of"}
_JOINERS = {",", "and", "then", "but", ".", "&", "+", "!"}
_CONDITIONS = {"if", "unless", "when", "whenever", "provided", "assuming", "once", "while", "after", "before",
               "depending", "whether"}
_RANGE = {"-", "–", "—", "to", "through", "thru", ".."}
_EXCEPT = {"not", "except", "excluding", "without"}
# phrases of several words, as the single word the parser reads them as
_PHRASES = [(("hold", "off", "on"), "hold"), (("hold", "off"), "hold"), (("don't",), "not"), (("dont",), "not"),
            (("do", "not"), "not"), (("except", "for"), "except"), (("apart", "from"), "except"),
            (("other", "than"), "except"), (("tell", "me", "about"), "why"), (("what", "about"), "why"),
            (("what's", "pending"), "pending"), (("what", "is", "pending"), "pending"), (("show", "pending"), "pending"),
            (("list", "pending"), "pending"), (("show", "the", "status"), "status"), (("show", "status"), "status"),
            (("set", "the", "batch", "size"), "batchsize"), (("set", "batch", "size"), "batchsize"),
            (("the", "batch", "size"), "batchsize"), (("batch", "size"), "batchsize"), (("batch_size",), "batchsize"),
            (("wait", "on"), "hold"), (("all", "pending"), "all"), (("all", "waiting"), "all"),
            (("all", "of", "them"), "all"), (("every", "one"), "all"), (("everyone",), "all"),
            (("everything",), "all"), (("the", "status"), "status"), (("resume", "the", "campaign"), "resume"),
            (("pause", "the", "campaign"), "pause"), (("take", "that", "back"), "undo"), (("take", "it", "back"), "undo")]
_VERBS = {"approve": "approve", "accept": "approve", "reject": "reject", "decline": "reject", "skip": "hold",
          "hold": "hold", "leave": "hold", "edit": "edit", "why": "why", "explain": "why", "status": "status",
          "pending": "pending", "list": "pending", "queue": "pending", "pause": "pause", "resume": "resume",
          "unpause": "resume", "continue": "resume", "batchsize": "batchsize", "help": "help", "undo": "undo",
          "withdraw": "undo"}
_EDIT_PAIR = re.compile(r"(?:\"([^\"]+)\"|'([^']+)'|([A-Za-z_][\w.\-]*))\s*=\s*([^\s,;:]+)")
_LOOKS_LIKE_A_COMMAND = re.compile(r"\b(approve|accept|reject|decline|skip|hold|edit|pause|resume)\b\s*[Ss#]?\d*", re.I)


class NotUnderstood(Exception):
    pass


@dataclass
class Parsed:
    calls: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # why nothing was understood: the message changes nothing
    help: bool = False


@dataclass
class _Token:
    kind: str  # id, word, sep, other
    text: str  # the word lower-cased, the id as an int's text
    start: int
    end: int


def parse(text: str) -> Parsed:
    """The commands a message stands for, exactly, or the reason it stands for none."""
    try:
        return _check(_Parser(text).message())
    except NotUnderstood as exc:
        return Parsed(problem=str(exc))


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{next(_counter)}", "type": "tool_call"}


def sample_id(number: int) -> str:
    return f"S{number:04d}"


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            continue
        raw = m.group()
        if kind == "id":
            out.append(_Token("id", str(int(raw.lstrip("Ss#"))), m.start(), m.end()))
        else:
            out.append(_Token(kind, raw.lower().replace("’", "'"), m.start(), m.end()))
    return _join_phrases(out)


def _join_phrases(tokens: list[_Token]) -> list[_Token]:
    out, i = [], 0
    while i < len(tokens):
        for words, word in _PHRASES:
            n = len(words)
            if all(t.kind == "word" and t.text == w for t, w in zip(tokens[i:i + n], words)) and len(tokens) >= i + n:
                out.append(_Token("word", word, tokens[i].start, tokens[i + n - 1].end))
                i += n
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.segments = re.split(r"[;\n]", text)

    def message(self) -> Parsed:
        if not self.text.strip():
            raise NotUnderstood("the message is empty")
        parsed = Parsed()
        for segment in self.segments:
            self.seg, self.toks, self.i = segment, _tokens(segment), 0
            self._segment(parsed)
        if not parsed.calls and not parsed.help:
            raise NotUnderstood("the message holds no command")
        return parsed

    # --- the token stream ---------------------------------------------------------------------
    def peek(self, k: int = 0) -> _Token | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def is_word(self, token: _Token | None, *words: str) -> bool:
        return token is not None and token.kind in ("word", "sep") and token.text in words

    def fail(self, token: _Token | None, what: str = "") -> NotUnderstood:
        if token is None:
            return NotUnderstood(f"{what or 'the command is incomplete'} in {_short(self.seg)}")
        word = self.seg[token.start:token.end]
        if token.text in _CONDITIONS:
            return NotUnderstood(f"I cannot check conditions ({_short(word, 40)} in {_short(self.seg)}): say "
                                 "exactly which samples, and nothing was done")
        return NotUnderstood(f"I did not understand {_short(word, 40)} in {_short(self.seg)}"
                             + (f": {what}" if what else ""))

    def skip(self, words: set[str]) -> None:
        while self.peek() is not None and self.peek().text in words and self.peek().kind != "id":
            self.i += 1

    # --- clauses ------------------------------------------------------------------------------
    def _segment(self, parsed: Parsed) -> None:
        while True:
            self.skip(_JOINERS | _FILLER)
            token = self.peek()
            if token is None:
                return
            if token.kind != "word":
                raise self.fail(token)
            negated = token.text == "not"
            if negated:
                self.i += 1
                token = self.peek()
                if token is not None and token.kind == "id":
                    parsed.calls.append(call("hold", sample_ids=self.ids()))
                    continue
                if token is None or _VERBS.get(token.text) not in ("approve", "reject"):
                    raise self.fail(token, "I understand 'not' only before ids, 'approve' or 'reject'")
            verb = _VERBS.get(token.text)
            if verb is None:
                raise self.fail(token)
            self.i += 1
            if negated:
                verb = "hold"
            getattr(self, f"_{verb}")(parsed)

    def _approve(self, parsed: Parsed) -> None:
        self.skip(_FILLER)
        everything = self.is_word(self.peek(), "all")
        ids: list[str] = []
        if everything:
            self.i += 1
        else:
            ids = self.ids()
        excepted: list[str] = []
        while True:
            mark = self.i
            self.skip({",", "but"})
            token = self.peek()
            if self.is_word(token, *_EXCEPT):
                self.i += 1
                if self.is_word(self.peek(), "all") and not everything and token.text == "not":
                    self.i += 1  # "approve 3, not all": these only
                    continue
                self.skip(_FILLER)
                excepted += self.ids()
            elif everything and self.i > mark and self.toks[self.i - 1].text == "but" and token and token.kind == "id":
                excepted += self.ids()
            else:
                self.i = mark
                break
        if not everything and excepted:
            ids = [i for i in ids if i not in excepted]
            if not ids:
                raise NotUnderstood(f"nothing is left to approve in {_short(self.seg)}")
        parsed.calls.append(call("approve", sample_ids=ids, all_pending=everything,
                                 except_ids=excepted if everything else []))

    def _hold(self, parsed: Parsed) -> None:
        self.skip(_FILLER)
        parsed.calls.append(call("hold", sample_ids=self.ids()))

    def _why(self, parsed: Parsed) -> None:
        self.skip(_FILLER)
        parsed.calls += [call("explain", sample_id=i) for i in self.ids()]
        self.skip({"?"})  # a question is what "why" asks

    def _reject(self, parsed: Parsed) -> None:
        self.skip(_FILLER)
        ids = self.ids()
        reason = self.rest()
        reason = re.sub(r"^\s*(?:[:,\-–—]|because\b|since\b|as\b)\s*", "", reason, flags=re.I).strip()
        if not reason:
            raise NotUnderstood(f"a rejection needs a reason, e.g. 'reject {ids[0]}: too much Pb' "
                                f"(in {_short(self.seg)})")
        self._reason_is_no_command(reason)
        parsed.calls.append(call("reject", sample_ids=ids, reason=reason))

    def _edit(self, parsed: Parsed) -> None:
        self.skip(_FILLER)
        (target,) = self.ids(single=True)
        body = re.sub(r"^\s*:", "", self.rest())
        inputs, at = {}, 0
        while (pair := _EDIT_PAIR.match(body, at + len(body[at:]) - len(body[at:].lstrip(" \t,")))) is not None:
            dq, sq, bare, value = pair.groups()
            inputs[dq or sq or bare] = _value(value)
            at = pair.end()
        tail = body[at:].strip()
        reason = re.sub(r"^(?::|because\b)\s*", "", tail, flags=re.I)
        if not inputs or (tail and reason == tail):
            raise NotUnderstood(f"an edit is 'edit 3 NAME=VALUE ... [because REASON]'; I did not understand "
                                f"{_short(tail or 'the missing NAME=VALUE')} in {_short(self.seg)}")
        self._reason_is_no_command(reason)
        parsed.calls.append(call("edit", sample_id=target, inputs=inputs, reason=reason.strip()))

    def _status(self, parsed: Parsed) -> None:
        self.skip({"?"})
        parsed.calls.append(call("status"))

    def _pending(self, parsed: Parsed) -> None:
        self.skip({"?"})
        parsed.calls.append(call("list_pending"))

    def _pause(self, parsed: Parsed) -> None:
        parsed.calls.append(call("pause"))

    def _resume(self, parsed: Parsed) -> None:
        parsed.calls.append(call("resume"))

    def _help(self, parsed: Parsed) -> None:
        parsed.help = True

    def _undo(self, parsed: Parsed) -> None:
        parsed.calls.append(call("undo"))

    def _batchsize(self, parsed: Parsed) -> None:
        if self.is_word(self.peek(), "to", "=", ":"):
            self.i += 1
        sign = -1 if self.is_word(self.peek(), "-") else 1
        self.i += sign < 0
        token = self.peek()
        if token is None or token.kind != "id" or not self.seg[token.start].isdigit():
            raise self.fail(token, "the batch size is a whole number, e.g. 'batch size 2'")
        self.i += 1
        parsed.calls.append(call("set_batch_size", batch_size=sign * int(token.text)))

    # --- pieces -------------------------------------------------------------------------------
    def ids(self, single: bool = False) -> list[str]:
        """One or more ids and ranges; at least one."""
        out: list[int] = []
        while True:
            token = self.peek()
            if token is None or token.kind != "id":
                if out:
                    break
                raise self.fail(token, "expected a sample id such as 3 or S0003")
            self.i += 1
            first = last = int(token.text)
            if self.is_word(self.peek(), *_RANGE) and self.peek(1) is not None and self.peek(1).kind == "id":
                last = int(self.peek(1).text)
                self.i += 2
                if last < first:
                    raise NotUnderstood(f"the range {first} to {last} runs backwards in {_short(self.seg)}")
            if last - first + len(out) >= MAX_IDS:
                raise NotUnderstood(f"a message may name at most {MAX_IDS} samples")
            out += range(first, last + 1)
            if single:
                return [sample_id(out[0])] if len(out) == 1 else self._one_only()
            mark = self.i
            self.skip({",", "and", "&", "+"})
            if self.peek() is None or self.peek().kind != "id":
                self.i = mark
                break
        return [sample_id(n) for n in dict.fromkeys(out)]

    def _one_only(self) -> list[str]:
        raise NotUnderstood(f"name one sample here, in {_short(self.seg)}")

    def rest(self) -> str:
        """The raw text from the current token to the end of the segment (a reason, an edit's body)."""
        start = self.peek().start if self.peek() is not None else len(self.seg)
        self.i = len(self.toks)
        return self.seg[start:]

    def _reason_is_no_command(self, reason: str) -> None:
        if _LOOKS_LIKE_A_COMMAND.search(reason):
            raise NotUnderstood(f"the reason {_short(reason)} reads like another command; put ';' between a reason "
                                "and the next command")


def _short(text: str, limit: int = 80) -> str:
    """Part of the operator's message, quoted in a refusal: enough to find it, never the whole of a long one."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _value(raw: str) -> Any:
    try:
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        return raw


def _check(parsed: Parsed) -> Parsed:
    """Merge the approvals and take out what the message held or rejected; refuse contradictions."""
    if any(c["name"] == "undo" for c in parsed.calls) and len(parsed.calls) > 1:
        raise NotUnderstood("say 'undo' by itself: it takes back what this chat last carried out")
    approvals = [c for c in parsed.calls if c["name"] == "approve"]
    held = [i for c in parsed.calls if c["name"] == "hold" for i in c["args"]["sample_ids"]]
    rejected = [i for c in parsed.calls if c["name"] == "reject" for i in c["args"]["sample_ids"]]
    edited = [c["args"]["sample_id"] for c in parsed.calls if c["name"] == "edit"]
    twice = sorted({i for i in rejected if rejected.count(i) > 1} | set(rejected) & set(edited)
                   | {i for i in edited if edited.count(i) > 1})
    if twice:
        raise NotUnderstood(f"{', '.join(twice)} is given two different decisions in one message")
    if sum(len(c["args"].get("sample_ids", [])) for c in parsed.calls) > MAX_IDS:
        raise NotUnderstood(f"a message may name at most {MAX_IDS} samples")
    if approvals:
        everything = any(c["args"]["all_pending"] for c in approvals)
        named = list(dict.fromkeys(i for c in approvals for i in c["args"]["sample_ids"]))
        clash = sorted(set(named) & set(rejected + edited))
        if clash:
            other = "rejected" if set(clash) & set(rejected) else "edited"
            raise NotUnderstood(f"{', '.join(clash)} is both approved and {other} in one message")
        if everything and named:
            raise NotUnderstood("approve either all or named samples, not both, in one message")
        first = parsed.calls.index(approvals[0])
        parsed.calls = [c for c in parsed.calls if c["name"] != "approve"]
        if everything:
            excepted = [i for c in approvals for i in c["args"]["except_ids"]] + held + rejected + edited
            merged = call("approve", sample_ids=[], all_pending=True, except_ids=list(dict.fromkeys(excepted)))
        else:
            left = [i for i in named if i not in held]
            if not left:
                raise NotUnderstood("nothing is left to approve: every sample named is also held or skipped")
            merged = call("approve", sample_ids=left, all_pending=False, except_ids=[])
        parsed.calls.insert(first, merged)
    return parsed
