"""In-suite schemathesis run (≥ 300 generated requests, zero 5xx); the ≥ 2,000-request
run is ``bench/api_fuzz.py``."""

from __future__ import annotations

import pytest

from tests.access.fuzz_api import fuzz


def test_openapi_fuzz_no_5xx(backend: str, request: pytest.FixtureRequest) -> None:
    if backend != "sqlite":
        pytest.skip("one backend in the suite; bench/api_fuzz.py runs the long campaign")
    world = request.getfixturevalue("world")
    statuses = fuzz(world, 340)
    print(dict(statuses))
    assert sum(statuses.values()) >= 300
    assert not [s for s in statuses if s >= 500]
    assert any(200 <= s < 300 for s in statuses)       # valid credentials reached handlers
