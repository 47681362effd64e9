"""The 422 a request schema gives names fields in the services' style (``results[1].code``)."""

from __future__ import annotations

import pytest

from labvault.api.problems import field_path


@pytest.mark.parametrize(("loc", "expected"), [
    (("body", "results", 1, "observed_at"), "results[1].observed_at"),
    (("body", "request", "requested_at"), "request.requested_at"),
    (("body", "request", "tests", 0), "request.tests[0]"),
    (("body",), ""),
    (("query", "since"), "query.since"),
    (("body", "results", 0, "value", "body"), "results[0].value.body"),   # only the root
])
def test_schema_error_locations_read_like_the_services(loc: tuple[int | str, ...],
                                                       expected: str) -> None:
    assert field_path(loc) == expected
