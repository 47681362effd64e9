"""``labvault init | demo | serve``"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from labvault.cli import _common
from labvault.cli._common import JsonOpt, emit, err_console, out_console, user_errors
from labvault.config import Settings
from labvault.domain.actors import Actor


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("demo")(demo)
    app.command("serve")(serve)


@user_errors
def init(data_dir: Path = typer.Option(None, "--data-dir", help="Data directory (default ./var)."),
         key_provider: str = typer.Option(None, "--key-provider", help="file or pkcs11."),
         as_json: bool = JsonOpt) -> None:
    """Create the data directory, the root key and the schema."""
    from labvault.services.wiring import init_labvault
    if data_dir is not None:
        _common.state.data_dir = data_dir
    s = _common.settings()
    if key_provider:
        s = s.with_provider(key_provider)
    lv = init_labvault(s)
    lv.close()
    info = {"data_dir": str(s.data_dir), "key_provider": s.key_provider,
            "key_file": str(s.key_file) if s.key_provider == "file" else None,
            "database": "sqlite" if s.is_sqlite else "postgresql"}
    emit(info, as_json, lambda: out_console.print(
        f"labvault initialised in {s.data_dir}; root key: "
        f"{info['key_file'] or 'PKCS#11 token ' + s.pkcs11_token}.\n"
        "Keep the key file out of every backup of the data directory, and back it up apart."))


def _analyser(lv: Any) -> Callable[[str, bytes], Any]:
    """The demo's analyser: an HL7 message stored as ``labvault mllp`` stores it."""
    from labvault.interop.hl7.handler import Hl7Handler
    return lambda tenant_id, raw: Hl7Handler(lv, Actor.system("mllp"), tenant_id).handle(raw)[0]


@user_errors
def demo(scenario: str = typer.Argument(None, help="breach: re-enact the incident end to end."),
         labs: int = typer.Option(3, "--labs", min=1, max=100, help="Laboratories to create."),
         patients: int = typer.Option(300, "--patients", min=0, max=2_000_000,
                                      help="Patients in all, spread over the laboratories."),
         as_json: bool = JsonOpt) -> None:
    """Seed synthetic laboratories and French patients (Faker fr_FR; never a real person)."""
    if scenario == "breach":
        from labvault.cli.breach import demo_breach
        return demo_breach(None, as_json)
    from labvault.services.demo import seed_demo
    from labvault.services.wiring import init_labvault
    s = _common.settings()
    lv = init_labvault(s)
    try:
        summary = seed_demo(lv, labs, patients, analyser=_analyser(lv))
    finally:
        lv.close()
    emit(summary, as_json, lambda: out_console.print_json(data=summary))


@user_errors
def serve(host: str = typer.Option("127.0.0.1", "--host",
                                   help="Address to listen on (default loopback only)."),
          port: int = typer.Option(8000, "--port", help="TCP port."),
          workers: int = typer.Option(1, "--workers", min=1, max=64,
                                      help="Worker processes."),
          tls_cert: Path = typer.Option(None, "--tls-cert",
                                        help="PEM certificate (chain): serve HTTPS (TLS 1.2+)."),
          tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
          insecure_plaintext: bool = typer.Option(False, "--insecure-plaintext",
                                                  help="Serve plain HTTP on a non-loopback "
                                                       "address (a TLS proxy in front)."),
          demo: bool = typer.Option(False, "--demo",
                                    help="A demo instance: on first run (no database yet) "
                                         "create it with synthetic data and accounts whose "
                                         "credentials are published; loopback only."),
          deliver: bool = typer.Option(False, "--deliver",
                                       help="Also send the queued reports to the "
                                            "prescribers' systems (one sender thread, "
                                            "as `delivery send`).")
          ) -> None:
    """Serve the REST/FHIR API and web pages (--demo: a demo instance, seeded on first run)."""
    import os

    import uvicorn

    from labvault.interop import tls
    # checked before anything starts: a refusal or an unusable file is exit 2, not a
    # traceback from a worker
    context = tls.listening_context(host, tls_cert, tls_key, None, insecure_plaintext,
                                    "patients' records, results and session tokens")
    if tls_cert is not None:
        for line in tls.expiry_lines(tls.certificate_info(tls_cert)):
            err_console.print(line, highlight=False)
    s = _common.settings()
    _first_run(s, demo, host)
    os.environ["LABVAULT_DATA_DIR"] = str(s.data_dir)
    scheme = "https" if context is not None else "http"
    sender = None
    if deliver:
        # One sender in this (the supervising) process, however many API workers serve.
        from labvault.interop.hl7.outbound import Sender
        from labvault.services.wiring import open_labvault
        sender = Sender(open_labvault(s))
        sender.start()
        err_console.print("sending queued reports to the prescribers' systems "
                          f"every {sender.interval:g} s", highlight=False)
    err_console.print(f"labvault serving on {scheme}://{host}:{port}  (OpenAPI: /docs)")
    try:
        uvicorn.run("labvault.api.app:create_app_from_env", factory=True, host=host,
                    port=port, workers=workers, log_level="warning", proxy_headers=False,
                    ssl_certfile=str(tls_cert) if context is not None else None,
                    ssl_keyfile=str(tls_key) if context is not None else None)
    finally:
        if sender is not None:
            sender.stop()
            sender.lv.close()


DEMO_BANNER = ("[bold red]DEMO INSTANCE[/]: synthetic patients, and accounts whose password and "
               "TOTP secret are published in the README. Never put real data here.")


def _first_run(s: Settings, demo: bool, host: str) -> None:
    """Without a database, ``serve`` starts nothing — a typo in the data directory must
    not start an instance — unless ``--demo`` asks for a demo instance, seeded here."""
    from labvault.errors import ConfigurationError, UserError
    from labvault.interop import tls
    if demo and not tls.is_loopback(host):
        raise UserError("--demo listens on loopback only",
                        "its accounts' credentials are published; drop --host or --demo")
    if demo and not s.is_sqlite:
        raise UserError("--demo works on the embedded SQLite default only",
                        "unset LABVAULT_DATABASE_URL, or seed with `labvault demo`")
    if not s.is_sqlite or (s.data_dir / "labvault.db").exists():
        return      # --demo seeds a first run only: an existing installation is served as is
    if not demo:
        raise ConfigurationError(
            f"no labvault data in {s.data_dir}",
            "check --data-dir / LABVAULT_DATA_DIR; `labvault init` creates an installation, "
            "`labvault serve --demo` a demo one (python3 scripts/run does that)")
    from labvault.services.demo import seed_demo
    from labvault.services.wiring import init_labvault
    err_console.print(DEMO_BANNER, highlight=False)
    err_console.print(f"first run: creating {s.data_dir} with synthetic demo data…")
    lv = init_labvault(s)
    try:
        summary = seed_demo(lv, 3, 300, analyser=_analyser(lv))
    finally:
        lv.close()
    err_console.print_json(data=summary)
