"""The optional native HMAC loop gives the same bytes as the standard library."""

from __future__ import annotations

import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labvault.crypto import _primitives as P


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), messages=st.lists(st.binary(max_size=300), max_size=20),
       size=st.integers(min_value=1, max_value=32))
def test_digest_many_matches_hmac(key: bytes, messages: list[bytes], size: int) -> None:
    h = P.HmacSha256(key)
    expected = b"".join(hmac.digest(key, m, "sha256")[:size] for m in messages)
    assert h.digest_many(messages, size) == expected
    assert h.digest_many_python(messages, size) == expected
    assert [h.digest(m) for m in messages] == [hmac.digest(key, m, "sha256") for m in messages]
    assert [P.hmac_sha256(key, m) for m in messages] == [hmac.digest(key, m, "sha256")
                                                         for m in messages]


def test_digest_many_rejects_bad_input() -> None:
    h = P.HmacSha256(os.urandom(32))
    with pytest.raises(ValueError, match="size"):
        h.digest_many([b"a"], 33)
    with pytest.raises(ValueError, match="size"):
        h.digest_many([b"a"], 0)
    if P.native_hmac():
        with pytest.raises(TypeError, match=r"messages\[1\]"):
            h.digest_many([b"a", "b"], 8)  # type: ignore[list-item]


def test_native_loop_is_built_in_ci() -> None:
    # CI machines have a C compiler and OpenSSL's headers: a silent fallback there
    # would hide a broken build (and make breach triage ~6x slower on its MACs).
    if os.environ.get("CI") != "true" and not P.native_hmac():
        pytest.skip("native HMAC loop not built here (no C compiler / OpenSSL headers)")
    assert P.native_hmac()


@settings(max_examples=100, deadline=None)
@given(key=st.binary(min_size=32, max_size=32),
       values=st.lists(st.tuples(st.sampled_from(["nir", "email", "phone", "name_dob"]),
                                 st.text(max_size=40)), max_size=10))
def test_indexer_digest_many_equals_digest(key: bytes, values: list[tuple[str, str]]) -> None:
    from labvault.crypto import blind_index as bi
    ix = bi.Indexer(key)
    assert ix.digest_many(values) == [bi.digest(key, k, v) for k, v in values]
