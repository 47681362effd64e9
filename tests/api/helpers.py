"""What the REST door's tests share: a role's bearer header, a problem+json answer."""

from __future__ import annotations

from typing import Any

from tests.access.conftest import Lab, World


def bearer(w: World, lab: Lab, role: str) -> dict[str, str]:
    """The Authorization header of ``lab``'s account of ``role`` (a fresh login)."""
    return {"Authorization": f"Bearer {w.login(lab.emails[role])}"}


def problem(r: Any, status: int, code: str) -> dict[str, Any]:
    """The problem+json body of ``r``, checked to be ``status`` with error ``code``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body
