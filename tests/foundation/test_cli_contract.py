"""The CLI contract other tools script against (issue #2): JSON shapes on stdout,
exit code 0 on success and 2 with a clear message (no traceback) for user errors."""

from __future__ import annotations

import json
import os
import random
import stat
from typing import Any

from labvault.synthetic import make_finess
from tests.foundation.conftest import Cli, synthetic, write_ndjson


def test_full_contract(cli: Cli) -> None:
    info = cli.ok("init")
    assert info["data_dir"] == str(cli.data_dir)
    assert info["database"] == ("sqlite" if cli.backend == "sqlite" else "postgresql")
    assert info["key_provider"] == "file" and info["key_file"] == str(cli.key_file)
    assert stat.S_IMODE(cli.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.data_dir.stat().st_mode) == 0o700
    assert cli.ok("init")["data_dir"] == str(cli.data_dir)   # idempotent, keeps the key
    finess = make_finess(random.Random(5))
    added = cli.ok("tenant", "add", "Laboratoire des Flandres", "--finess", finess)
    assert set(added) >= {"id"} and added["id"].startswith("lab_")
    tenant = added["id"]
    listed = cli.ok("tenant", "list")
    assert [(t["id"], t["finess"], t["patients"]) for t in listed] == [(tenant, finess, 0)]

    recs = synthetic(12, seed=81)
    f = write_ndjson(cli.root / "p.ndjson", recs)
    rep = cli.ok("patient", "import", str(f), "--tenant", tenant)
    assert rep == {"imported": 12, "skipped_existing": 0, "rejected": 0, "rejections": []}
    r0 = recs[0]
    by = {
        "nir": cli.ok("patient", "find", "--tenant", tenant, "--nir", r0["nir"]),
        "email": cli.ok("patient", "find", "--tenant", tenant, "--email", r0["email"].upper()),
        "phone": cli.ok("patient", "find", "--tenant", tenant, "--phone", r0["phone"]),
        "name": cli.ok("patient", "find", "--tenant", tenant, "--birth-name",
                       r0["birth_name"].upper(), "--first-name", r0["first_names"][0],
                       "--birth-date", r0["birth_date"]),
    }
    assert all(set(v) == {"patients"} for v in by.values())
    pid = by["nir"]["patients"][0]
    assert all(pid in v["patients"] for v in by.values())
    shown = cli.ok("patient", "show", pid)
    assert shown["id"] == pid and shown["tenant_id"] == tenant
    assert shown["categories"] == ["clinical", "contact", "coverage", "identity"]
    for k in ("birth_name", "first_names", "birth_date", "sex", "nir", "email", "address",
              "blood_group", "prescriber", "external_id"):
        assert shown[k] == r0[k], k
    rot = cli.ok("keys", "rotate", "--tenant", tenant)
    assert rot["rotated"][0]["tenant_id"] == tenant and rot["rotated"][0]["kek_version"] == 2
    assert set(cli.ok("keys", "rotate")["rotated"][0]) >= {"tenant_id", "kek_version",
                                                          "rewrapped_keys"}
    erased = cli.ok("patient", "erase", pid)
    assert erased["id"] == pid and erased["tenant_id"] == tenant and erased["erased_at"]
    assert cli.ok("patient", "find", "--tenant", tenant, "--nir", r0["nir"]) == {"patients": []}
    # human output works too
    r = cli.run("tenant", "list")
    assert r.exit_code == 0 and "Laboratoire des Flandres" in r.stdout


def test_demo(sqlite_cli: Cli) -> None:
    out = sqlite_cli.ok("demo", "--labs", "2", "--patients", "30")
    labs = out["laboratories"]
    assert len(labs) == 2 and sum(x["imported"] for x in labs) == 30
    # a morning of each laboratory: orders at every step, an analyser's results, and two
    # messages waiting in the import-issues queue (an unknown patient, an unknown code)
    assert [x["lab_day"] for x in labs] == [{"orders": 7, "import_issues": 2}] * 2
    issues = sqlite_cli.ok("hl7-issues", "list", "--tenant", labs[0]["id"])
    assert sorted(i["kind"] for i in issues) == ["unknown-code", "unknown-patient"]
    again = sqlite_cli.ok("demo", "--labs", "2", "--patients", "30")   # idempotent
    assert sum(x["imported"] for x in again["laboratories"]) == 0
    assert all("lab_day" not in x for x in again["laboratories"])
    assert sum(x["already_present"] for x in again["laboratories"]) == 30
    assert {t["patients"] for t in sqlite_cli.ok("tenant", "list")} == {15}


def _msg(r: Any) -> str:
    return str(r.stderr)


def test_user_errors_exit_2(sqlite_cli: Cli, tmp_path: Any) -> None:
    cli = sqlite_cli
    # wrong data dir: nothing initialised there
    r = cli.user_error("patient", "show", "pt_x",
                       env={"LABVAULT_DATA_DIR": str(tmp_path / "nowhere")})
    assert "no labvault data" in _msg(r) and "labvault init" in _msg(r)
    r = cli.user_error("--data-dir", str(tmp_path / "nowhere"), "tenant", "list")
    assert "no labvault data" in _msg(r)

    tenant = cli.init_with_tenant()
    # invalid FINESS (bad Luhn key, wrong length), duplicate FINESS
    assert "Luhn" in _msg(cli.user_error("tenant", "add", "Lab", "--finess", "590000017"))
    assert "9 characters" in _msg(cli.user_error("tenant", "add", "Lab", "--finess", "1234"))
    finess = cli.ok("tenant", "list")[0]["finess"]
    assert "already exists" in _msg(cli.user_error("tenant", "add", "Lab", "--finess", finess))
    # unknown tenant
    f = write_ndjson(cli.root / "p.ndjson", synthetic(2, seed=83))
    assert "no laboratory" in _msg(cli.user_error("patient", "import", str(f),
                                                  "--tenant", "lab_unknown"))
    assert "lab_unknown" in _msg(cli.user_error("patient", "find", "--tenant", "lab_unknown",
                                                "--nir", synthetic(1, seed=83)[0]["nir"]))
    # bad file: missing, a directory, not NDJSON at all
    assert "is not a file" in _msg(cli.user_error("patient", "import", str(tmp_path / "absent"),
                                                  "--tenant", tenant))
    assert "is not a file" in _msg(cli.user_error("patient", "import", str(tmp_path),
                                                  "--tenant", tenant))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(2000).replace(b"\n", b" ") + b"\n")
    r = cli.run("patient", "import", str(junk), "--tenant", tenant, "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["imported"] == 0
    # find without a criterion, with an invalid NIR
    assert "no search criterion" in _msg(cli.user_error("patient", "find", "--tenant", tenant))
    assert "nir" in _msg(cli.user_error("patient", "find", "--tenant", tenant, "--nir", "123"))
    # unknown patient
    assert "no such patient" in _msg(cli.user_error("patient", "show", "pt_nope"))
    # missing key file
    cli.key_file.rename(cli.root / "elsewhere.key")
    r = cli.user_error("tenant", "list")
    assert "key file" in _msg(r) and "not found" in _msg(r)


def test_init_refuses_unknown_provider(sqlite_cli: Cli) -> None:
    r = sqlite_cli.run("init", "--key-provider", "vault")
    assert r.exit_code == 2 and "not a key provider" in r.stderr


def _real_finess() -> str:
    from labvault.services.demo import demo_finesses
    demo = demo_finesses()
    return next(f for f in (make_finess(random.Random(n)) for n in range(1000, 2000))
                if f not in demo)


def test_demo_refused_beside_real_laboratories(sqlite_cli: Cli) -> None:
    """QA report item 4: `demo` on a production install added a platform operator whose
    password and TOTP secret are published."""
    cli = sqlite_cli
    cli.ok("init")
    cli.ok("tenant", "add", "Laboratoire Reel", "--finess", _real_finess())
    r = cli.user_error("demo", "--labs", "1", "--patients", "3")
    assert "not demo data" in r.stderr and "Laboratoire Reel" in r.stderr
    assert r.stdout == ""
    assert [t["name"] for t in cli.ok("tenant", "list")] == ["Laboratoire Reel"]
    from sqlalchemy import func, select

    from labvault.store.tables_access import accounts
    lv = cli.open()
    try:                            # no account of any kind was added
        with lv.begin() as conn:
            assert conn.execute(select(func.count()).select_from(accounts)).scalar() == 0
    finally:
        lv.close()
    assert "not demo data" in cli.user_error("demo", "breach").stderr


def test_demo_beside_demo_laboratories_only(sqlite_cli: Cli) -> None:
    from labvault.services.demo import demo_finesses
    labs = sqlite_cli.ok("demo", "--labs", "3", "--patients", "6")["laboratories"]
    assert {lab["finess"] for lab in labs} <= demo_finesses()
    again = sqlite_cli.ok("demo", "--labs", "4", "--patients", "8")["laboratories"]
    assert [lab["id"] for lab in again[:3]] == [lab["id"] for lab in labs]


def test_serve_seeds_only_when_asked(sqlite_cli: Cli, monkeypatch: Any) -> None:
    """QA report item 4: a typo in the data directory started a demo instance with
    published credentials."""
    import uvicorn
    served: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(k))
    cli = sqlite_cli
    r = cli.user_error("serve")
    assert "no labvault data" in r.stderr and "--demo" in r.stderr
    assert not cli.data_dir.exists() and not served
    assert "loopback" in cli.user_error("serve", "--demo", "--host", "192.0.2.1",
                                        "--insecure-plaintext").stderr
    assert not cli.data_dir.exists()
    r = cli.run("serve", "--demo")
    assert r.exit_code == 0 and "DEMO INSTANCE" in r.stderr and len(served) == 1
    assert len(cli.ok("tenant", "list")) == 3
    assert cli.run("serve").exit_code == 0 and len(served) == 2     # an existing install


def test_run_script_serves_a_demo_instance() -> None:
    """README's first command: `python3 scripts/run` is `labvault serve --demo`."""
    from pathlib import Path
    script = (Path(__file__).resolve().parents[2] / "scripts" / "run").read_text()
    assert 'args = sys.argv[1:] or ["serve", "--demo"]' in script


def test_init_refuses_a_key_file_inside_the_data_dir(sqlite_cli: Cli, tmp_path: Any) -> None:
    """QA report item 5: a copy of the data directory must not carry the root key."""
    cli = sqlite_cli
    inside = cli.data_dir / "inside.key"
    r = cli.user_error("init", env={"LABVAULT_KEY_FILE": str(inside)})
    assert "inside the data directory" in r.stderr and not inside.exists()
    real = tmp_path / "real"                       # the same through symbolic links
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    r = cli.user_error("init", env={"LABVAULT_DATA_DIR": str(real),
                                    "LABVAULT_KEY_FILE": str(tmp_path / "alias" / "x.key")})
    assert "inside the data directory" in r.stderr
    r = cli.user_error("init", env={"LABVAULT_DATA_DIR": str(tmp_path / "alias"),
                                    "LABVAULT_KEY_FILE": str(real / "sub" / "x.key")})
    assert "inside the data directory" in r.stderr
    assert not list(real.rglob("*.key"))
    assert cli.ok("init")["key_file"] == str(cli.key_file)      # beside: fine


def test_init_refuses_a_data_dir_that_is_a_file(sqlite_cli: Cli, tmp_path: Any) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    r = sqlite_cli.user_error("init", env={"LABVAULT_DATA_DIR": str(afile)})
    assert "is a file" in r.stderr


def test_lost_key_file_is_restored_not_recreated(sqlite_cli: Cli) -> None:
    """QA report item 6: the hint said `run labvault init`, and init then wrote a fresh
    root key that opens nothing."""
    cli = sqlite_cli
    cli.init_with_tenant()
    cli.key_file.rename(cli.root / "backup.key")
    r = cli.user_error("tenant", "list")
    assert "not found" in r.stderr and "restore the key file" in r.stderr
    assert "labvault init` to create" not in r.stderr
    r = cli.user_error("init")
    assert "restore the key file" in r.stderr and "new key cannot open" in r.stderr
    assert not cli.key_file.exists()
    (cli.root / "backup.key").rename(cli.key_file)            # the restore
    assert len(cli.ok("tenant", "list")) == 1


def test_missing_key_of_an_empty_installation_says_init(sqlite_cli: Cli) -> None:
    cli = sqlite_cli
    cli.ok("init")
    cli.key_file.unlink()
    assert "labvault init` to create it" in cli.user_error("tenant", "list").stderr
    assert cli.ok("init")["key_file"] == str(cli.key_file)     # nothing sealed: a new key


UNKNOWN_LAB_COMMANDS = [
    ("audit", "verify", "--tenant", "lab_nope"),        # exit 1 said "tampering"
    ("audit", "checkpoint", "--tenant", "lab_nope"),
    ("export", "list", "--tenant", "lab_nope"),          # the rest answered "nothing"
    ("guard", "suspensions", "--tenant", "lab_nope"),
    ("guard", "config", "--tenant", "lab_nope"),
    ("guard", "release", "--tenant", "lab_nope", "--account", "acct_x"),
    ("alerts", "list", "--tenant", "lab_nope"),
    ("breach", "backfill", "--tenant", "lab_nope"),
    ("audit", "fhir", "--out", "-", "--tenant", "lab_nope"),
    ("catalogue", "show", "--tenant", "lab_nope"),
    ("hl7-issues", "list", "--tenant", "lab_nope"),
]


def test_unknown_laboratory_is_a_user_error_everywhere(sqlite_cli: Cli) -> None:
    """QA report item 8: an unknown tenant is exit 2 "no laboratory", never an empty
    answer (exit 0) nor a tamper alarm (exit 1)."""
    cli = sqlite_cli
    cli.init_with_tenant()
    for args in UNKNOWN_LAB_COMMANDS:
        r = cli.user_error(*args, "--json")
        assert "no laboratory lab_nope" in r.stderr, args
    r = cli.user_error("audit", "report", "--user", "acct_nope", "--json")
    assert "no account acct_nope" in r.stderr
    assert cli.ok("audit", "verify", "--tenant", "_platform")["ok"] is True
    assert cli.ok("alerts", "list", "--tenant", "platform") == {"alerts": []}


def test_cli_option_mistakes(sqlite_cli: Cli) -> None:
    """QA report items 10 and 11: a typo in --status hid every alert; --root silently
    ignored --tenant."""
    cli = sqlite_cli
    tenant = cli.init_with_tenant()
    for typo in ("closed", "ack"):
        r = cli.run("alerts", "list", "--status", typo, "--json")
        assert r.exit_code == 2 and "open" in r.stderr and "acked" in r.stderr
    assert cli.ok("alerts", "list", "--status", "acked") == {"alerts": []}
    before = cli.key_file.read_text()
    r = cli.user_error("keys", "rotate", "--root", "--tenant", tenant)
    assert "exclusive" in r.stderr and cli.key_file.read_text() == before


def test_cli_patient_find_is_audited_as_administration(sqlite_cli: Cli) -> None:
    """QA report item 13: the operator's search was recorded with purpose `care`."""
    cli = sqlite_cli
    tenant = cli.init_with_tenant()
    rec = synthetic(1, seed=87)[0]
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", [rec])),
           "--tenant", tenant)
    (pid,) = cli.ok("patient", "find", "--tenant", tenant, "--nir", rec["nir"])["patients"]
    seen = cli.ok("audit", "access", "--patient", pid)
    searches = [e for e in seen if e["action"] == "search"]
    assert searches and {e["purpose"] for e in searches} == {"administration"}


def test_out_into_a_missing_directory_is_a_user_error(sqlite_cli: Cli, tmp_path: Any) -> None:
    """QA report item 14: a FileNotFoundError traceback."""
    cli = sqlite_cli
    cli.init_with_tenant()
    nowhere = tmp_path / "nodir" / "x.ndjson"
    assert "no directory" in cli.user_error("audit", "fhir", "--out", str(nowhere)).stderr
    assert "no directory" in cli.user_error("audit", "register", "--out", str(nowhere)).stderr
    assert "is a directory" in cli.user_error("audit", "fhir", "--out", str(tmp_path)).stderr
    out = tmp_path / "f.ndjson"                  # a refusal leaves no empty file behind
    cli.user_error("audit", "fhir", "--out", str(out), "--tenant", "lab_nope")
    assert not out.exists()
    assert cli.ok("audit", "fhir", "--out", str(out))["resources"] > 0


def test_import_names_the_encoding_and_format_mistakes(sqlite_cli: Cli) -> None:
    """QA report item 16: a UTF-8 byte-order mark was rejected with Python's own hint, a
    UTF-16 file got a latin-1 hint, a CSV file a "not valid JSON" per line."""
    cli = sqlite_cli
    tenant = cli.init_with_tenant()
    recs = synthetic(3, seed=89)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    bom = cli.root / "bom.ndjson"
    bom.write_bytes(text.encode("utf-8-sig"))
    assert cli.ok("patient", "import", str(bom), "--tenant", tenant)["imported"] == 3
    for name, data in (("utf16.ndjson", text.encode("utf-16")),
                       ("utf16le.ndjson", text.encode("utf-16-le"))):
        f = cli.root / name
        f.write_bytes(data)
        r = cli.user_error("patient", "import", str(f), "--tenant", tenant)
        assert "UTF-16" in r.stderr and "iconv -f UTF-16 -t UTF-8" in r.stderr
    csv_file = cli.root / "patients.csv"
    csv_file.write_text("birth_name;first_names;birth_date\nMartin;Jeanne;1984-12-31\n",
                        encoding="utf-8-sig")
    r = cli.user_error("patient", "import", str(csv_file), "--tenant", tenant)
    assert "looks like CSV" in r.stderr and "';'" in r.stderr and "NDJSON" in r.stderr
    r = cli.run("patient", "import", "-", "--tenant", tenant, input=csv_file.read_text())
    assert r.exit_code == 2 and "looks like CSV" in r.stderr
    assert [t["patients"] for t in cli.ok("tenant", "list")] == [3]


def test_patient_timestamps_carry_their_offset(cli: Cli) -> None:
    """QA report item 18: `patient show --json` gave created_at without an offset."""
    from datetime import datetime, timedelta
    tenant = cli.init_with_tenant()
    rec = synthetic(1, seed=97)[0]
    cli.ok("patient", "import", str(write_ndjson(cli.root / "p.ndjson", [rec])),
           "--tenant", tenant)
    (pid,) = cli.ok("patient", "find", "--tenant", tenant, "--nir", rec["nir"])["patients"]
    shown = cli.ok("patient", "show", pid)
    for key in ("created_at", "updated_at"):
        assert datetime.fromisoformat(shown[key]).utcoffset() == timedelta(0), shown[key]


def test_errors_are_neither_wrapped_nor_read_as_markup(sqlite_cli: Cli, tmp_path: Any) -> None:
    """Rich wrapped error lines at 80 columns when stderr was not a terminal (a log, a
    pipe): a long path was cut by a newline, and a ``[...]`` in a file name was taken for
    markup and vanished. The error is now one line, the path exactly as given."""
    cli = sqlite_cli
    tenant = cli.init_with_tenant()
    deep = tmp_path / ("exports-[bleu]-" + "x" * 60) / "patients [copie].ndjson"
    r = cli.user_error("patient", "import", str(deep), "--tenant", tenant)
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: ") and str(deep) in first, r.stderr


def test_the_two_readme_commands_share_one_install(tmp_path: Any, monkeypatch: Any) -> None:
    """`scripts/run` (no extras) after `scripts/test` (extras "dev") reinstalled the whole
    venv (~1 min), and `scripts/test` after `scripts/run` again: alternating the README's
    two commands paid it every time. A dev install now serves both."""
    import importlib.util
    from pathlib import Path
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    src = Path(__file__).resolve().parents[2]
    (root / "pyproject.toml").write_bytes((src / "pyproject.toml").read_bytes())
    spec = importlib.util.spec_from_file_location("_venv_under_test", src / "scripts" / "_venv.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", root)
    monkeypatch.setattr(mod, "VENV", root / ".venv")
    monkeypatch.setattr(mod, "BIN", root / ".venv" / "bin")
    installs: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool = False) -> None:
        if cmd[1:3] == ["-m", "venv"]:
            (root / ".venv" / "bin").mkdir(parents=True)
            (root / ".venv" / "bin" / "python").write_text("")
        elif "-e" in cmd:
            installs.append(cmd)
    monkeypatch.setattr(mod.subprocess, "run", fake_run)
    mod.ensure("dev")
    mod.ensure("")                       # run after test: nothing to install
    mod.ensure("dev")
    assert len(installs) == 1 and installs[0][-1].endswith("[dev]")
    (root / ".venv" / ".labvault-stamp").unlink()
    mod.ensure("")                       # run on a fresh venv: installs without extras
    mod.ensure("dev")                    # then test needs its extras: installs them
    assert [c[-1].endswith("[dev]") for c in installs[1:]] == [False, True]
