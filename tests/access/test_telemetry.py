"""No request telemetry leaves the process."""

from __future__ import annotations

from pathlib import Path

import pytest


class _ConfiguredProvider:
    """Stands for an OpenTelemetry SDK provider an operator (or a library) installed."""


def test_fastapi_native_telemetry_is_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Request spans, metrics and logs would carry paths and queries (patient ids, NIR
    # searches) to a collector, outside the gate and its audit: off even when the
    # environment asks for it and a provider is configured.
    from fastapi.telemetry import _asgi

    from labvault.api.app import create_app
    from labvault.config import Settings
    from labvault.services.app import Labvault
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")
    monkeypatch.setattr(_asgi.trace, "get_tracer_provider", _ConfiguredProvider)
    monkeypatch.setattr(_asgi.metrics, "get_meter_provider", _ConfiguredProvider)
    lv = Labvault.init(Settings(data_dir=tmp_path / "var", key_file=tmp_path / "k",
                                database_url=f"sqlite:///{tmp_path / 'var' / 'lv.db'}"))
    try:
        assert not create_app(lv)._native_telemetry.enabled()
    finally:
        lv.close()
