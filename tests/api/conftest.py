"""REST door fixtures: the access tests' two laboratories with one account per role and
an API client."""

from __future__ import annotations

from tests.access.conftest import (  # noqa: F401  (fixtures)
    alv,
    cheap_argon2,
    client,
    clock,
    world,
)
