"""Web door fixtures: the access tests' two laboratories with one account per role, the
real audit log (the portal's "who accessed my record" reads it), and a browser-like client
that does not follow redirects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from labvault.api.app import create_app
from labvault.services.app import Labvault
from tests.access.conftest import (  # noqa: F401  (fixtures)
    World,
    alv,
    cheap_argon2,
    clock,
    world,
)


@pytest.fixture
def web(world: World) -> World:  # noqa: F811  (the imported fixture)
    from labvault.services.audit import install_audit
    install_audit(world.lv)
    return world


@pytest.fixture
def browser(alv: Labvault) -> Iterator[TestClient]:  # noqa: F811  (the imported fixture)
    with TestClient(create_app(alv), base_url="http://testserver",
                    follow_redirects=False) as c:
        yield c
