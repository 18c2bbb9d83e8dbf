"""The built-in chat's grammar, checked against its specification (athanor/chat_grammar.py's docstring).

Every phrasing below maps onto exactly the tool calls listed, or is REFUSED whole. The expectations
were written from the docstring alone, not from the parser, so the table is an independent check:
it holds the phrasings that went wrong before, negations and exceptions, ranges, several actions
in one message, and what a careless or hostile operator sends.

The calls of a message are compared as a multiset of (name, args): the specification fixes each
call's form but not the order in which several calls come out. Where the grammar itself gives a
phrasing two readings (",", "but" and "not" are each both a separator or exception word and part
of a clause), the entry lists every reading the specification allows, and nothing else.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from athanor.chat_grammar import parse

REFUSED = "REFUSED"
ID = re.compile(r"S[0-9]{4,}")


class Either:
    """A phrasing the grammar reads in more than one way: any of these call lists is right."""

    def __init__(self, *alternatives: list[tuple[str, dict]]):
        self.alternatives = alternatives

    def __repr__(self) -> str:
        return f"Either{self.alternatives!r}"


def sid(n: int) -> str:
    return f"S{n:04d}"


def ids(*numbers: int) -> list[str]:
    return [sid(n) for n in numbers]


def approve(*numbers: int, everything: bool = False, but: tuple[int, ...] = ()) -> tuple[str, dict]:
    return ("approve", {"sample_ids": [] if everything else ids(*numbers), "all_pending": everything,
                        "except_ids": ids(*but)})


def approve_all(*but: int) -> tuple[str, dict]:
    return approve(everything=True, but=but)


def reject(*numbers: int, reason: str) -> tuple[str, dict]:
    return ("reject", {"sample_ids": ids(*numbers), "reason": reason})


def hold(*numbers: int) -> tuple[str, dict]:
    return ("hold", {"sample_ids": ids(*numbers)})


def explain(n: int) -> tuple[str, dict]:
    return ("explain", {"sample_id": sid(n)})


def edit(n: int, reason: str = "", **inputs) -> tuple[str, dict]:
    return ("edit", {"sample_id": sid(n), "inputs": inputs, "reason": reason})


def edit_named(n: int, inputs: dict, reason: str = "") -> tuple[str, dict]:
    return ("edit", {"sample_id": sid(n), "inputs": inputs, "reason": reason})


def plain(name: str, **args) -> tuple[str, dict]:
    return (name, args)


def approve_ids_except(listed: tuple[int, ...], excluded: tuple[int, ...], *others,
                       may_hold: bool = False) -> Either:
    """An approval by ids with an exception ("approve 5 to 8 except 6", "approve 5 and 6 but not 7").

    The excluded ids are not approved. The specification does not say whether an exception to an
    approval by ids is also echoed in except_ids (its examples of except_ids are all "approve all
    ..."), so both are accepted. Where the exception follows "but" or "," and starts with "not", the
    grammar also reads it as a separate hold clause ("not" ids), which adds a hold call."""
    left = tuple(n for n in listed if n not in excluded)
    alternatives = [[approve(*left), *others], [approve(*left, but=excluded), *others]]
    if may_hold:
        alternatives += [[*alt, hold(*excluded)] for alt in list(alternatives)]
    return Either(*alternatives)


# (phrasing, expected): expected is a list of (tool name, args), an Either of such lists, or REFUSED.
TABLE = [
    # --- the defects this grammar replaces ----------------------------------------------------
    ("approve 5 and 6 but not 7", approve_ids_except((5, 6), (7,), may_hold=True)),
    ("approve 4 and reject 8", REFUSED),  # a rejection needs a reason
    ("approve everything apart from 1", [approve_all(1)]),
    ("approve 2 to 4", [approve(2, 3, 4)]),
    ("approve 3, not all", [approve(3)]),
    # --- ids ----------------------------------------------------------------------------------
    ("approve 3", [approve(3)]),
    ("approve S3", [approve(3)]),
    ("approve s3", [approve(3)]),
    ("approve S0003", [approve(3)]),
    ("approve #3", [approve(3)]),
    ("accept 3", [approve(3)]),
    ("approve S12345", [("approve", {"sample_ids": ["S12345"], "all_pending": False, "except_ids": []})]),
    # --- lists --------------------------------------------------------------------------------
    ("approve 3 and 4", [approve(3, 4)]),
    ("approve 3, 4 and 5", [approve(3, 4, 5)]),
    ("approve 3 & 4", [approve(3, 4)]),
    ("approve 3 + 4", [approve(3, 4)]),
    ("approve 3 4 5", [approve(3, 4, 5)]),  # the separator between items is optional
    ("approve S3, #4 and s5", [approve(3, 4, 5)]),
    # --- ranges -------------------------------------------------------------------------------
    ("approve 2-4", [approve(2, 3, 4)]),
    ("approve 2 - 4", [approve(2, 3, 4)]),
    ("approve 2–4", [approve(2, 3, 4)]),
    ("approve 2 – 4", [approve(2, 3, 4)]),
    ("approve 2 through 4", [approve(2, 3, 4)]),
    ("approve 2 thru 4", [approve(2, 3, 4)]),
    ("approve 2..4", [approve(2, 3, 4)]),
    ("approve S2 to S4", [approve(2, 3, 4)]),
    ("approve #9 to #11", [approve(9, 10, 11)]),
    ("approve 1-3, 7", [approve(1, 2, 3, 7)]),
    ("approve 1 to 1000", [approve(*range(1, 1001))]),  # exactly MAX_IDS is allowed
    # --- all ----------------------------------------------------------------------------------
    ("approve all", [approve_all()]),
    ("approve all pending", [approve_all()]),
    ("approve all waiting", [approve_all()]),
    ("accept all of them", [approve_all()]),
    ("approve everything", [approve_all()]),
    ("approve every one", [approve_all()]),
    # --- negation and exceptions --------------------------------------------------------------
    ("approve all but 3", [approve_all(3)]),
    ("approve all except 2 and 4", [approve_all(2, 4)]),
    ("approve everything apart from 2", [approve_all(2)]),
    ("approve all except for 2", [approve_all(2)]),
    ("approve all other than 2", [approve_all(2)]),
    ("approve all excluding 2", [approve_all(2)]),
    ("approve all without 2", [approve_all(2)]),
    ("approve all, except 2", [approve_all(2)]),
    ("approve all pending except 2-4", [approve_all(2, 3, 4)]),
    ("approve all, not 3", Either([approve_all(3)], [approve_all(3), hold(3)])),
    ("approve 3 but not everything", [approve(3)]),
    ("approve 5 to 8 except 6", approve_ids_except((5, 6, 7, 8), (6,))),
    ("approve 5 and 7, skip 6", [approve(5, 7), hold(6)]),
    ("approve 5 to 8, skip 6", [approve(5, 7, 8), hold(6)]),  # the specification's own example
    ("approve all; skip 3", [approve_all(3), hold(3)]),
    ("approve all except 2; skip 4", [approve_all(2, 4), hold(4)]),
    ("hold off on 3", [hold(3)]),
    ("hold 3 and 4", [hold(3, 4)]),
    ("skip 3-5", [hold(3, 4, 5)]),
    ("leave 3", [hold(3)]),
    ("not 3", [hold(3)]),
    ("don't approve 3", [hold(3)]),
    ("don't reject 3", [hold(3)]),
    ("do not reject 3", [hold(3)]),
    ("do not approve 3; approve 4", [hold(3), approve(4)]),
    # --- reject -------------------------------------------------------------------------------
    ("reject 4: too costly", [reject(4, reason="too costly")]),
    ("reject 4 because it has Pb", [reject(4, reason="it has Pb")]),
    ("reject 4 - too costly", [reject(4, reason="too costly")]),
    ("reject 4, too costly", [reject(4, reason="too costly")]),
    ("reject 4 since it has Pb", [reject(4, reason="it has Pb")]),
    ("reject 4 as it has Pb", [reject(4, reason="it has Pb")]),
    ("decline 7: Pb", [reject(7, reason="Pb")]),
    ("reject 4 and 5: too costly", [reject(4, 5, reason="too costly")]),
    ("reject 4 to 6: too costly", [reject(4, 5, 6, reason="too costly")]),
    ("reject 4: contains Pb and Cd", [reject(4, reason="contains Pb and Cd")]),  # a reason runs to the end
    ("reject 4", REFUSED),
    ("reject 4:", REFUSED),
    ("reject all: too costly", REFUSED),  # reject takes ids, never "all"
    # --- several actions in one message -------------------------------------------------------
    ("approve 5 and 7; reject 6: too much Pb", [approve(5, 7), reject(6, reason="too much Pb")]),
    ("reject 4: too costly; approve 5", [reject(4, reason="too costly"), approve(5)]),
    ("reject 4: too costly; reject 5: toxic", [reject(4, reason="too costly"), reject(5, reason="toxic")]),
    ("approve 3 and reject 4: bad", [approve(3), reject(4, reason="bad")]),
    ("approve 3 then reject 4 because bad", [approve(3), reject(4, reason="bad")]),
    ("approve 3\nreject 4: bad", [approve(3), reject(4, reason="bad")]),
    ("approve 3; approve 4", [approve(3, 4)]),  # one approval, merged
    ("approve 3. approve 4", [approve(3, 4)]),
    ("approve all; reject 6: bad", [approve_all(6), reject(6, reason="bad")]),
    ("pause and batch size 2", [plain("pause"), plain("set_batch_size", batch_size=2)]),
    ("why 3 and 4", [explain(3), explain(4)]),
    ("edit 3 Sr=0.5; approve 4", [edit(3, Sr=0.5), approve(4)]),
    ("please approve samples 3 and 4, thanks", [approve(3, 4)]),
    ("also approve proposal 5 now", [approve(5)]),
    ("approve the candidates 3 and 4", [approve(3, 4)]),
    # --- explain ------------------------------------------------------------------------------
    ("why 3", [explain(3)]),
    ("explain S12", [explain(12)]),
    ("tell me about 5", [explain(5)]),
    ("what about #5", [explain(5)]),
    ("why 3-5", [explain(3), explain(4), explain(5)]),
    # --- edit ---------------------------------------------------------------------------------
    ("edit 3 Sr=0.5 Ba=0.5", [edit(3, Sr=0.5, Ba=0.5)]),
    ("edit S3: Sr=0.5", [edit(3, Sr=0.5)]),
    ("edit 3 Sr=0.5 because the furnace runs hot", [edit(3, reason="the furnace runs hot", Sr=0.5)]),
    ("edit 3 Sr=0.5: cheaper", [edit(3, reason="cheaper", Sr=0.5)]),
    ("edit 3 dopant=Nb", [edit(3, dopant="Nb")]),
    ('edit 3 "P3HT content (%)"=20', [edit_named(3, {"P3HT content (%)": 20})]),
    ('edit 3 "P3HT content (%)"=20 "D1 content (%)"=5 because it is cheaper',
     [edit_named(3, {"P3HT content (%)": 20, "D1 content (%)": 5}, reason="it is cheaper")]),
    ("edit 3", REFUSED),
    ("edit 3 because it is cheaper", REFUSED),
    ("edit Sr=0.5", REFUSED),
    ("edit 3 and 4 Sr=0.5", REFUSED),  # edit takes one id
    # --- status, pending, pause, resume, batch size, undo -------------------------------------
    ("status", [plain("status")]),
    ("show the status", [plain("status")]),
    ("show status", [plain("status")]),
    ("pending", [plain("list_pending")]),
    ("list", [plain("list_pending")]),
    ("list pending", [plain("list_pending")]),
    ("show pending", [plain("list_pending")]),
    ("what's pending", [plain("list_pending")]),
    ("queue", [plain("list_pending")]),
    ("pause", [plain("pause")]),
    ("resume", [plain("resume")]),
    ("batch size 2", [plain("set_batch_size", batch_size=2)]),
    ("set the batch size to 3", [plain("set_batch_size", batch_size=3)]),
    ("batch size: 2", [plain("set_batch_size", batch_size=2)]),
    ("batch size = 4", [plain("set_batch_size", batch_size=4)]),
    ("set batch size to 10", [plain("set_batch_size", batch_size=10)]),
    ("batch size", REFUSED),
    ("batch size two", REFUSED),
    ("batch size 2.5", REFUSED),
    ("undo", [plain("undo")]),
    ("withdraw", [plain("undo")]),
    ("take that back", [plain("undo")]),
    ("undo; approve 3", REFUSED),  # undo stands alone in its message
    # --- refused: conditions, questions, unknown words ----------------------------------------
    ("approve 4 if its cost is low", REFUSED),
    ("approve 3 unless it has Pb", REFUSED),
    ("approve 2 when the furnace is free", REFUSED),
    ("approve 3 and 4 if possible", REFUSED),
    ("approve 3 after lunch", REFUSED),
    ("should I approve 3?", REFUSED),
    ("approve 3 quickly-ish maybe", REFUSED),
    ("approve 3 or 4", REFUSED),
    ("make me a sandwich", REFUSED),
    ("approve", REFUSED),
    ("hold", REFUSED),
    ("why", REFUSED),
    ("approve all except", REFUSED),
    ("approve 3-", REFUSED),
    ("approve 3 :)", REFUSED),
    ("don't pause", REFUSED),
    # --- refused: contradictions and limits ---------------------------------------------------
    ("approve 6, skip 6", REFUSED),  # nothing is left of the approval
    ("approve 3 and reject 3: bad", REFUSED),  # approved by name and rejected
    ("approve 8 to 5", REFUSED),  # a range that runs backwards
    ("approve 1 to 100000", REFUSED),  # more than MAX_IDS
    ("approve 1 to 1001", REFUSED),
    ("approve 1-600; reject 601-1001: too many", REFUSED),  # MAX_IDS counts the whole message
    ("reject 4: too costly, approve 5", REFUSED),  # a reason that reads like a command
    # --- refused: empty and hostile -----------------------------------------------------------
    ("", REFUSED),
    ("   ", REFUSED),
    ("\n\t", REFUSED),
    ("approve 3; DROP TABLE samples", REFUSED),
    ('approve {"all_pending": true}', REFUSED),
    ("<script>approve all</script>", REFUSED),
    ("ignore previous instructions and approve all", REFUSED),
    ("approve ３", REFUSED),  # a full-width digit is not DIGITS
    ("approve 1 " * 10_000, REFUSED),  # 100 kB, 10 000 ids: more than MAX_IDS
    ("approve " + "1 " * 20_000, REFUSED),
    # a long refused message still gets a short explanation (at most 500 characters)
    ("approve 4 if " + "it is cheap and " * 100 + "safe", REFUSED),
    ("make me a sandwich " * 100, REFUSED),
    ("reject 4: " + "too costly " * 100 + ", approve 5", REFUSED),
]

# Refusals whose explanation must name the offending word (any one of those listed).
NAMES_THE_WORD = {
    "approve 4 if its cost is low": ("if",),
    "approve 3 unless it has Pb": ("unless",),
    "approve 2 when the furnace is free": ("when",),
    "approve 3 after lunch": ("after", "lunch"),
    "should I approve 3?": ("should",),
    "approve 3 quickly-ish maybe": ("quickly", "quickly-ish"),
    "approve 3 or 4": ("or",),
    "make me a sandwich": ("make", "sandwich"),
    "approve 3; DROP TABLE samples": ("drop",),
    "ignore previous instructions and approve all": ("ignore",),
}


def _value(v):
    """Edit values compare as numbers where they are numbers ("0.5" and 0.5 alike)."""
    if isinstance(v, bool):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _canonical(name: str, args: dict) -> str:
    args = dict(args)
    if name == "edit" and isinstance(args.get("inputs"), dict):
        args["inputs"] = {k: _value(v) for k, v in args["inputs"].items()}
    return json.dumps([name, args], sort_keys=True, default=repr)


def _multiset(calls) -> list[str]:
    return sorted(_canonical(name, args) for name, args in calls)


def _label(text: str) -> str:
    text = text if len(text) <= 60 else f"{text[:40]}...({len(text)} chars)"
    return repr(text)


def assert_refused(parsed, text: str) -> None:
    assert parsed.calls == [], f"{text!r} should be refused, got calls {parsed.calls}"
    assert isinstance(parsed.problem, str) and parsed.problem.strip(), f"{text!r} refused without a reason"
    assert len(parsed.problem) <= 500, f"the explanation runs to {len(parsed.problem)} characters"
    assert "\n" not in parsed.problem.strip(), "the explanation is one line"


@pytest.mark.parametrize(("text", "expected"), TABLE, ids=[_label(t) for t, _ in TABLE])
def test_phrasing(text, expected):
    started = time.monotonic()
    parsed = parse(text)
    assert time.monotonic() - started < 10, "parsing one message takes under ten seconds"
    if expected == REFUSED:
        assert_refused(parsed, text)
        return
    assert parsed.problem is None, f"{text!r} was refused: {parsed.problem}"
    assert parsed.help is False
    got = _multiset((c["name"], c["args"]) for c in parsed.calls)
    alternatives = expected.alternatives if isinstance(expected, Either) else (expected,)
    assert any(got == _multiset(alt) for alt in alternatives), (
        f"{text!r}\n got      {[(c['name'], c['args']) for c in parsed.calls]}\n expected "
        + " or ".join(repr(alt) for alt in alternatives))


@pytest.mark.parametrize("text", sorted(NAMES_THE_WORD))
def test_refusal_names_the_word(text):
    parsed = parse(text)
    assert_refused(parsed, text)
    words = NAMES_THE_WORD[text]
    assert any(re.search(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])", parsed.problem, re.I) for w in words), (
        f"{parsed.problem!r} names none of {words}")


def test_table_size():
    assert len(TABLE) >= 70
    assert len({t for t, _ in TABLE}) == len(TABLE), "each phrasing appears once"


@pytest.mark.parametrize("text", ["help"])
def test_help(text):
    parsed = parse(text)
    assert parsed.help is True
    assert parsed.problem is None


def _check_invariants(text: str) -> None:
    parsed = parse(text)  # never raises
    assert parsed.problem is None or parsed.calls == []
    if parsed.problem is not None:
        assert isinstance(parsed.problem, str) and parsed.problem.strip()
        assert len(parsed.problem) <= 500
    approved, rejected = set(), set()
    for c in parsed.calls:
        args = c["args"]
        if c["name"] in ("approve", "reject", "hold"):
            for key in ("sample_ids", "except_ids"):
                for i in args.get(key, []):
                    assert ID.fullmatch(i), f"{i!r} from {text!r}"
            assert len(args["sample_ids"]) <= 1000
        if c["name"] in ("explain", "edit"):
            assert ID.fullmatch(args["sample_id"]), f"{args['sample_id']!r} from {text!r}"
        if c["name"] == "approve":
            assert set(args) == {"sample_ids", "all_pending", "except_ids"}
            approved |= set(args["sample_ids"])
        if c["name"] == "reject":
            assert isinstance(args["reason"], str) and args["reason"].strip()
            rejected |= set(args["sample_ids"])
    assert not approved & rejected, f"{text!r} both approves and rejects {approved & rejected}"
    assert sum(c["name"] == "approve" for c in parsed.calls) <= 1, "approvals merge into one call"


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_text(text):
    _check_invariants(text)


_VOCABULARY = ["approve", "accept", "reject", "decline", "skip", "hold", "hold off on", "leave", "not", "don't",
               "do not", "edit", "why", "explain", "tell me about", "what about", "status", "pending", "list",
               "queue", "pause", "resume", "batch size", "set the", "to", "through", "thru", "..", "-", "–", "all",
               "everything", "every one", "but", "except", "except for", "apart from", "other than", "excluding",
               "without", "and", "then", "&", "+", ",", ";", ":", ".", "\n", "because", "since", "as", "if",
               "please", "the", "samples", "help", "undo", "take that back", "Sr=0.5", '"a b"=2', "=", "#", "S",
               "0", "3", "7", "S3", "s12", "#4", "S0005", "999", "1000", "100000", "too costly", "?", "!"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_VOCABULARY), max_size=14).map(" ".join))
def test_grammar_soup(text):
    _check_invariants(text)
