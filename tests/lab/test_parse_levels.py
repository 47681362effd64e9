"""The reader's HL7 tree (``parse._splitter``, python-hl7's splitting rules done directly)
is exactly the tree of ``hl7.parse``'s default containers walked afterwards (the first
reader, kept here as the reference): same fields, repetitions, components, subcomponents
and unescaped values, on golden messages, mutated ones and generated ones made of little
but separators and escapes."""

from __future__ import annotations

import random

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.interop.hl7.parse import Field, Unparseable, read_message, unescape
from tests.lab import hl7_samples as S
from tests.lab.test_fuzz_mllp import SEEDS, mutate


def _reference_field(f: object, unesc) -> Field:  # type: ignore[no-untyped-def]
    """The former ``_norm_field``: python-hl7's default containers, regularised."""
    if isinstance(f, str):
        return [[[unesc(f)]]] if f else []
    reps: Field = []
    items = list(f)  # type: ignore[call-overload]
    if items and all(isinstance(x, str) for x in items):
        return [[[unesc(x) for x in items]]] if any(items) else []
    for rep in items:
        if isinstance(rep, str):
            reps.append([[unesc(rep)]])
            continue
        comps: list[list[str]] = []
        for comp in rep:
            if isinstance(comp, str):
                comps.append([unesc(comp)])
            else:
                comps.append([unesc(str(s)) for s in comp])
        reps.append(comps)
    return reps


def reference(raw: bytes) -> list[tuple[str, tuple[Field, ...], int]]:
    """What the reader gave before: same checks (via read_message), default containers."""
    msg = read_message(raw)                      # raises Unparseable like before
    seps, codec = msg.separators, msg.encoding
    text = "\r".join(
        s for s in __import__("re").sub(r"\r\n|\n", "\r", raw.decode(codec).strip(
            "\r\n\x00 ")).split("\r") if s)

    def unesc(v: str) -> str:
        return unescape(v, seps[0], seps[1], seps[2], seps[3], seps[4], codec)
    out = []
    counts: dict[str, int] = {}
    for seg in hl7.parse(text):
        sid = str(seg[0][0]) if not isinstance(seg[0], str) else seg[0]
        counts[sid] = counts.get(sid, 0) + 1
        fields: list[Field] = [[[[sid]]]]
        start = 1
        if sid == "MSH":
            fields.append([[[seps[0]]]])
            fields.append([[[str(seg[2][0]) if not isinstance(seg[2], str) else seg[2]]]])
            start = 3
        for f in list(seg)[start:]:
            fields.append(_reference_field(f, unesc))
        out.append((sid, tuple(fields), counts[sid]))
    return out


def same(raw: bytes) -> bool:
    try:
        got = read_message(raw)
    except Unparseable:
        with pytest.raises(Unparseable):
            reference(raw)
        return False
    assert [(s.id, s.fields, s.sequence) for s in got.segments] == reference(raw)
    return True


@pytest.mark.parametrize("raw", [
    *SEEDS,
    S.oru_numeric().encode("utf-8"),
    b"MSH|^~\\&|A|B|C|D|20260301||ORU^R01|X1|P|2.5\rZZZ\rNTE|1||a\\T\\b&c^d~e~~^&\\S\\\\E\\",
    b"MSH|^~\\&|A|B|C|D|20260301||ORU^R01|X2|P|2.5||||||8859/1\rNTE|1||\\XE9\\t\\XC3A9\\|",
    b"MSH#*!/$#A#B#C#D#20260301##ORU*R01#X3#P#2.5\rPID#1##a*b$c!d!!*$#/F/x",
])
def test_golden_and_odd_messages_give_the_same_tree(raw: bytes) -> None:
    assert same(raw)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(SEEDS) - 1), st.integers(0, 2**32 - 1))
def test_mutated_messages_give_the_same_tree(seed: int, rng_seed: int) -> None:
    rng = random.Random(rng_seed)
    parsed = sum(same(mutate(rng, SEEDS[seed])) for _ in range(50))
    assert parsed >= 5          # about half the mutations still parse: compared, not skipped


# Segments made mostly of separators, escapes and empty parts: the odd corners of
# python-hl7's rules (empty repetitions, a lone subcomponent separator, a BHS inside a
# message, trailing blanks stripped from the whole message).
_PART = st.text(alphabet="ab |^~&\\FSTRE.X0", max_size=12)
_SEGMENT = st.tuples(st.sampled_from(["PID", "OBX", "NTE", "ZZZ", "BHS", "OBR"]),
                     st.lists(_PART, max_size=6))


@settings(max_examples=400, deadline=None)
@given(st.lists(_PART, min_size=1, max_size=10), st.lists(_SEGMENT, max_size=6))
def test_generated_messages_give_the_same_tree(msh: list[str], segs: list[tuple[str, list[str]]]
                                               ) -> None:
    lines = ["MSH|^~\\&|" + "|".join(msh)]
    lines += [sid + ("|" + "|".join(parts) if parts else "") for sid, parts in segs]
    same("\r".join(lines).encode())
