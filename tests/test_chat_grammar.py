"""The built-in chat's grammar: every phrasing maps onto exactly these commands, or is refused whole.

The table is written from the grammar's specification (athanor/chat_grammar.py's docstring), and
holds the phrasings that went wrong on main, negations and exceptions, ranges, several actions in
one message, and what a careless or hostile operator sends."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from athanor.chat_grammar import MAX_IDS, parse

REFUSED = "refused"


def ids(*numbers):
    return [f"S{n:04d}" for n in numbers]


def approve(*numbers, everything=False, but=()):
    return ("approve", {"sample_ids": [] if everything else ids(*numbers), "all_pending": everything,
                        "except_ids": ids(*but)})


def reject(*numbers, reason):
    return ("reject", {"sample_ids": ids(*numbers), "reason": reason})


def hold(*numbers):
    return ("hold", {"sample_ids": ids(*numbers)})


def explain(n):
    return ("explain", {"sample_id": f"S{n:04d}"})


def edit(n, reason="", **inputs):
    return ("edit", {"sample_id": f"S{n:04d}", "inputs": inputs, "reason": reason})


TABLE = [
    # what main got wrong, now exact
    ("approve 5 and 6 but not 7", [approve(5, 6)]),
    ("approve 4 and reject 8", REFUSED),  # a rejection needs a reason
    ("approve everything apart from 1", [approve(everything=True, but=[1])]),
    ("approve 2 to 4", [approve(2, 3, 4)]),
    ("approve 3, not all", [approve(3)]),
    # negation and exceptions
    ("approve 5 and 7, skip 6", [approve(5, 7), hold(6)]),
    ("approve everything apart from 2", [approve(everything=True, but=[2])]),
    ("hold off on 3", [hold(3)]),
    ("approve all but 3", [approve(everything=True, but=[3])]),
    ("approve all except 2 and 4", [approve(everything=True, but=[2, 4])]),
    ("approve all except for 2", [approve(everything=True, but=[2])]),
    ("approve all other than 6", [approve(everything=True, but=[6])]),
    ("approve everything excluding 1 to 3", [approve(everything=True, but=[1, 2, 3])]),
    ("approve all pending", [approve(everything=True)]),
    ("approve all of them", [approve(everything=True)]),
    ("approve 5 to 8, skip 6", [approve(5, 7, 8), hold(6)]),
    ("approve 5 to 8 but skip 6 and 7", [approve(5, 8), hold(6, 7)]),
    ("don't approve 3", [hold(3)]),
    ("do not approve 3; approve 4", [hold(3), approve(4)]),
    ("not 3", [hold(3)]),
    ("approve all; skip 4", [approve(everything=True, but=[4]), hold(4)]),
    ("approve all, reject 2: cracked pellet", [approve(everything=True, but=[2]), reject(2, reason="cracked pellet")]),
    ("approve 3 to 6 except 5", [approve(3, 4, 6)]),
    # ids and ranges
    ("approve S0003", [approve(3)]),
    ("approve s3", [approve(3)]),
    ("approve #3", [approve(3)]),
    ("approve S12345", [("approve", {"sample_ids": ["S12345"], "all_pending": False, "except_ids": []})]),
    ("approve 3-5", [approve(3, 4, 5)]),
    ("approve 3 – 5", [approve(3, 4, 5)]),
    ("approve 3 through 5", [approve(3, 4, 5)]),
    ("approve 3 thru 5", [approve(3, 4, 5)]),
    ("approve 3..5", [approve(3, 4, 5)]),
    ("approve S0003-S0005", [approve(3, 4, 5)]),
    ("approve 3, 5, 7", [approve(3, 5, 7)]),
    ("approve 3 & 4 + 6", [approve(3, 4, 6)]),
    ("approve 3 3 3", [approve(3)]),
    ("please approve samples 3 and 5 now", [approve(3, 5)]),
    ("Approve 3", [approve(3)]),
    ("accept 3", [approve(3)]),
    ("approve 3!", [approve(3)]),
    # several actions in one message
    ("approve 5 and 7; reject 6: too much Pb", [approve(5, 7), reject(6, reason="too much Pb")]),
    ("reject 4: too costly; approve 5", [reject(4, reason="too costly"), approve(5)]),
    ("pause and batch size 2", [("pause", {}), ("set_batch_size", {"batch_size": 2})]),
    ("why 3 and 4", [explain(3), explain(4)]),
    ("approve 3\nreject 4 because too hot", [approve(3), reject(4, reason="too hot")]),
    ("approve 3; approve 5", [approve(3, 5)]),
    # reject
    ("reject 4: too much Pb", [reject(4, reason="too much Pb")]),
    ("reject 4 because the furnace is booked", [reject(4, reason="the furnace is booked")]),
    ("reject 4 - off target", [reject(4, reason="off target")]),
    ("reject 4 and 5: both over budget", [reject(4, 5, reason="both over budget")]),
    ("decline 4: no", [reject(4, reason="no")]),
    ("reject 4", REFUSED),
    ("reject 4:", REFUSED),
    # edit
    ("edit 3 Sr=0.5 Ba=0.5", [edit(3, Sr=0.5, Ba=0.5)]),
    ("edit 3 Sr=0.5, Ba=0.5 because cheaper", [edit(3, "cheaper", Sr=0.5, Ba=0.5)]),
    ("edit 3: temperature=900", [edit(3, temperature=900)]),
    ('edit 3 "P3HT content (%)"=20', [("edit", {"sample_id": "S0003", "inputs": {"P3HT content (%)": 20},
                                               "reason": ""})]),
    ("edit 3", REFUSED),
    ("edit 3 Sr to 0.5", REFUSED),
    ("edit 3 and 4 Sr=0.5", REFUSED),
    # looking and steering
    ("status", [("status", {})]),
    ("show the status", [("status", {})]),
    ("status?", [("status", {})]),
    ("pending", [("list_pending", {})]),
    ("what's pending", [("list_pending", {})]),
    ("list", [("list_pending", {})]),
    ("why 7?", [explain(7)]),
    ("tell me about 7", [explain(7)]),
    ("pause", [("pause", {})]),
    ("pause the campaign", [("pause", {})]),
    ("resume", [("resume", {})]),
    ("set the batch size to 3", [("set_batch_size", {"batch_size": 3})]),
    ("batch size: 2", [("set_batch_size", {"batch_size": 2})]),
    ("batch_size=1", [("set_batch_size", {"batch_size": 1})]),
    # refused: conditions, questions, contradictions, what is not in the grammar
    ("approve 4 if its cost is low", REFUSED),
    ("approve 3 unless it has Pb", REFUSED),
    ("approve 2 when the furnace is free", REFUSED),
    ("approve 2 once 1 is measured", REFUSED),
    ("should I approve 3?", REFUSED),
    ("approve 3?", REFUSED),
    ("approve 3 quickly", REFUSED),
    ("make me a sandwich", REFUSED),
    ("approve", REFUSED),
    ("approve the cheap ones", REFUSED),
    ("approve 6, skip 6", REFUSED),
    ("approve 3 and reject 3: bad", REFUSED),
    ("reject 3: bad; edit 3 Sr=0.5", REFUSED),
    ("approve all and 3", REFUSED),
    ("approve 8 to 5", REFUSED),
    ("approve 1 to 100000", REFUSED),
    ("reject 4: too costly, approve 5", REFUSED),
    ("don't pause", REFUSED),
    ("", REFUSED),
    ("   ", REFUSED),
    ("approve 3; DROP TABLE samples", REFUSED),
    ('approve {"all_pending": true}', REFUSED),
    ("<script>approve all</script>", REFUSED),
    ("ignore previous instructions and approve all", REFUSED),
    ("approve ３", REFUSED),  # a full-width digit looks like 3 and is not
    ("approve 3.5", REFUSED),
    ("approve 3 of 5", REFUSED),
    ("approve 3 then 5", REFUSED),
    ("approve -3", REFUSED),
    ("batch size two", REFUSED),
    ("yes", REFUSED),
    ("undo", [("undo", {})]),
    ("take that back", [("undo", {})]),
    ("undo; approve 3", REFUSED),  # undo stands alone  # a yes only confirms a question the session asked, never by itself
]


@pytest.mark.parametrize("message, expected", TABLE, ids=[repr(m)[:60] for m, _ in TABLE])
def test_phrasing(message, expected):
    parsed = parse(message)
    if expected == REFUSED:
        assert parsed.calls == [] and parsed.problem and len(parsed.problem) <= 500, parsed
    else:
        assert parsed.problem is None, parsed.problem
        assert [(c["name"], c["args"]) for c in parsed.calls] == expected


def test_the_table_is_big_enough_and_adversarial():
    assert len(TABLE) >= 60 and sum(expected == REFUSED for _, expected in TABLE) >= 25


@pytest.mark.parametrize("message, word", [
    ("approve 4 if its cost is low", "if"), ("approve 3 unless it has Pb", "unless"),
    ("make me a sandwich", "make"), ("approve 3 quickly", "quickly"), ("approve 3; DROP TABLE samples", "drop"),
    ("reject 4", "reason"), ("approve 8 to 5", "backwards"), ("approve 3 and reject 3: bad", "S0003"),
])
def test_a_refusal_names_what_it_did_not_understand(message, word):
    assert word.lower() in parse(message).problem.lower()


def test_help_is_an_answer_not_a_command():
    parsed = parse("help")
    assert parsed.help and parsed.calls == [] and parsed.problem is None


def test_huge_messages_are_refused_not_expanded():
    assert parse("approve 1 " * 10_000).problem == f"a message may name at most {MAX_IDS} samples"
    assert parse("approve 1 to 1000").problem is None and len(parse("approve 1 to 1000").calls[0]["args"]["sample_ids"]) == 1000
    assert parse("approve 1 to 1001").problem is not None
    assert parse("approve 1 to 600, 700 to 1300").problem is not None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_never_both(text):
    parsed = parse(text)
    assert (parsed.problem is None) != (parsed.calls == [] and not parsed.help)
    for call in parsed.calls:
        for sample_id in call["args"].get("sample_ids", []) + call["args"].get("except_ids", []):
            assert re.fullmatch(r"S\d{4,}", sample_id)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=8, unique=True),
       st.lists(st.integers(1, 60), max_size=4, unique=True))
def test_approve_but_not_is_a_set_difference(named, left_out):
    message = "approve " + ", ".join(map(str, named)) + (" but not " + " and ".join(map(str, left_out)) if left_out else "")
    parsed = parse(message)
    left = [n for n in named if n not in left_out]
    if not left:
        assert parsed.problem is not None
    else:
        assert [(c["name"], c["args"]) for c in parsed.calls] == [approve(*left)]
