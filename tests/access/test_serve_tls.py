"""``labvault serve`` over HTTPS: with a certificate it answers on TLS only (a plain HTTP
request to that port gets no answer) and sets its session cookie ``Secure``; beyond
loopback it refuses to serve plain HTTP without ``--insecure-plaintext``; unusable
certificate files are an exit 2 before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.doors import assert_refused, stop
from tests.pki import Pki


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_over_https(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    env = {**os.environ, "LABVAULT_DATA_DIR": str(tmp_path / "var"),
           "LABVAULT_KEY_FILE": str(tmp_path / "root.key")}
    env.pop("LABVAULT_DATABASE_URL", None)
    exe = [sys.executable, "-m", "labvault"]
    subprocess.run([*exe, "init"], env=env, check=True, capture_output=True)
    port = _port()
    server = subprocess.Popen([*exe, "serve", "--port", str(port), "--tls-cert", str(pki.cert),
                               "--tls-key", str(pki.key)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import ssl
    trust = ssl.create_default_context(cafile=str(pki.ca[0]))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://localhost:{port}/health", verify=trust, timeout=2)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "serve did not start"
            time.sleep(0.2)
        assert r.json() == {"status": "ok"}
        with pytest.raises(httpx.HTTPError):     # plain HTTP on the TLS port: no answer
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).raise_for_status()
        # the login form's cookie is Secure when served over HTTPS
        page = httpx.get(f"https://localhost:{port}/login", verify=trust, timeout=5)
        assert page.status_code == 200
        cookies = page.headers.get_list("set-cookie")
        assert cookies and all("; secure" in c.lower() for c in cookies), cookies
    finally:
        stop(server)


@pytest.mark.parametrize("args, says", [
    (["--host", "0.0.0.0"], "in clear would carry"),  # noqa: S104 - refused: the point
    (["--host", "10.0.0.8", "--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "does not exist"),
])
def test_serve_refuses_before_starting(args: list[str], says: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert_refused("serve", args, says, tmp_path, monkeypatch)
