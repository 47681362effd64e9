"""The body text and ids of audit entries: the fast paths write exactly what the reference
functions would (the MAC covers the stored text, so it only has to be deterministic, but it
is kept identical to the JSON every earlier entry was written with)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import re
import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.audit.entry import canonical, canonical_json
from labvault.crypto import DataKey, SealContext, envelope
from labvault.store.ids import new_id

_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text()
            | st.floats(allow_nan=True, allow_infinity=True))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)


@settings(max_examples=1500, deadline=None)
@given(body=st.dictionaries(st.text(max_size=8), _json, max_size=12))
def test_canonical_is_the_reference_json(body: dict[str, object]) -> None:
    try:
        want = canonical_json(body)
    except (ValueError, UnicodeEncodeError):    # pragma: no cover - json itself refuses
        return
    assert canonical(body) == want


class Colour(enum.Enum):
    RED = "red"


class Code(enum.StrEnum):
    A = "a"


def test_canonical_odd_values_fall_back_to_json() -> None:
    bodies: list[dict[Any, Any]] = [
        {"t": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)}, {"e": Colour.RED},
        {"c": Code.A}, {"f": [1e-05, 1e16, float("nan")]}, {"u": uuid.UUID(int=7)},
        {"s": {"x", "y"}}, {1: "int key"}, {"big": 2**64}, {"tuple": ("a", 1)},
        {"deep": [[[[[["x"]]]]]]}, {"sub": {"k": [None, True, "é\x00"]}}]
    for body in bodies:
        assert canonical(body) == canonical_json(body), body


def test_column_sealer_is_seal() -> None:
    key = DataKey(bytes(range(32)), "data-3")
    sealer = key.column("lab_a", "audit_entries", "body")
    items = [("ae_1", b'{"client":"10.0.0.1"}'), ("ae_2", b""), ("ae_\u00e9", b"x" * 300)]
    blobs = [*sealer.seal_many(items), *(sealer.seal(r, p) for r, p in items)]
    for (rid, plaintext), blob in zip(items * 2, blobs, strict=True):
        ctx = SealContext("lab_a", "audit_entries", "body", rid)
        assert key.open(ctx, blob) == plaintext
        assert envelope.unpack(blob)[0] == "data-3"
        head, tail = envelope.aad_parts("lab_a", "audit_entries", "body", "data-3")
        assert head + rid.encode() + tail == ctx.aad("data-3")
    start = len(envelope.pack("data-3", b""))
    assert len({b[start:start + 12] for b in blobs}) == len(blobs)       # distinct nonces
    for bad in (lambda: sealer.seal("a\x00b", b""), lambda: sealer.seal_many([("a\x00", b"")]),
                lambda: key.column("lab\x00", "t", "c")):
        try:
            bad()
        except ValueError:
            pass
        else:  # pragma: no cover
            raise AssertionError("a NUL in a seal context must be refused")


def test_new_id_shape() -> None:
    ids = {new_id("ae") for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"ae_[0-9a-hjkmnp-tv-z]{26}", i) for i in ids)
    assert {c for i in ids for c in i[3:]} == set("0123456789abcdefghjkmnpqrstvwxyz")
    assert json.dumps(sorted(ids))   # plain str
