"""Keys, scopes and rates as typed on the command line, and `batchserve keys` end to end on SQLite."""

from __future__ import annotations

import argparse
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchserve.server.auth.commands import parse_expiry
from batchserve.server.auth.keys import (
    check_name,
    default_burst,
    format_rate,
    key_digest,
    new_key,
    parse_rate,
    parse_scopes,
)
from batchserve.server.model_control import choose_key


def test_keys_are_random_url_safe_and_stored_as_sha256() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(re.fullmatch(r"bsk_[A-Za-z0-9_-]{43}", k) for k in keys)
    key = next(iter(keys))
    assert re.fullmatch(r"[0-9a-f]{64}", key_digest(key)) and key not in key_digest(key)


def test_scopes_rates_and_names() -> None:
    assert parse_scopes("stats, classify,stats") == ("classify", "stats")
    assert parse_scopes("ADMIN") == ("admin",)
    for bad in ("", "classify,write", ","):
        with pytest.raises(ValueError, match="scopes"):
            parse_scopes(bad)
    assert parse_rate("20/s") == 20 and parse_rate("600/min") == 10 and parse_rate("36/h") == 0.01
    assert parse_rate("1.5 / second") == 1.5
    for bad in ("20", "0/s", "-1/s", "20/day", "x/s"):
        with pytest.raises(ValueError):
            parse_rate(bad)
    assert [format_rate(r) for r in (20, 10 / 60, 1 / 3600, 0.3)] == ["20/s", "10/min", "1/h", "18/min"]
    assert default_burst(20) == 40 and default_burst(0.01) == 1
    for bad in ("anonymous", "admin-key", "key-123", "", "a b", "x" * 65, "-lead"):
        with pytest.raises(ValueError):
            check_name(bad)
    assert check_name("batch-client_2.prod") == "batch-client_2.prod"


def test_expiry_without_a_zone_is_utc() -> None:
    assert parse_expiry("2027-01-01").isoformat() == "2027-01-01T00:00:00+00:00"
    assert parse_expiry("2027-01-01T12:00:00+02:00").isoformat() == "2027-01-01T10:00:00+00:00"
    with pytest.raises(ValueError):
        parse_expiry("next tuesday")


def test_model_control_clients_take_api_key_or_admin_key() -> None:
    def args(api: str | None = None, admin: str | None = None) -> argparse.Namespace:
        return argparse.Namespace(api_key=api, admin_key=admin)

    env = {"BATCHSERVE_API_KEY": "from-env", "BATCHSERVE_ADMIN_KEY": "admin-env"}
    assert choose_key(args("flag", "other"), env) == "flag"
    assert choose_key(args(admin="admin-flag"), env) == "admin-flag"
    assert choose_key(args(), env) == "from-env"
    assert choose_key(args(), {"BATCHSERVE_ADMIN_KEY": "admin-env"}) == "admin-env"
    assert choose_key(args(), {}) is None


def batchserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchserve", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_keys_create_list_revoke_through_the_command(tmp_path: Path) -> None:
    db = ["--events-path", str(tmp_path / "keys.sqlite3")]
    empty = batchserve("keys", "list", *db, cwd=tmp_path)
    assert empty.returncode == 0 and "no keys" in empty.stdout
    assert not (tmp_path / "keys.sqlite3").exists()  # listing creates nothing
    created = batchserve("keys", "create", "batch-client", "--scopes", "classify,stats", "--rate", "20/s",
                         "--expires", "2099-01-01", *db, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"bsk_[A-Za-z0-9_-]{43}", key)  # the key alone on stdout
    assert "shown once" in created.stderr and key not in created.stderr
    again = batchserve("keys", "create", "batch-client", "--scopes", "classify", *db, cwd=tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr
    listed = batchserve("keys", "list", *db, cwd=tmp_path)
    assert listed.returncode == 0 and key not in listed.stdout and key_digest(key) not in listed.stdout
    line = next(row for row in listed.stdout.splitlines() if row.startswith("batch-client"))
    assert line.split()[1:4] == ["classify,stats", "20/s", "40"] and line.endswith("active")
    with sqlite3.connect(tmp_path / "keys.sqlite3") as con:
        stored = con.execute("SELECT key_sha256, scopes FROM api_keys WHERE name = 'batch-client'").fetchone()
        dump = "\n".join(con.iterdump())
    assert stored == (key_digest(key), "classify,stats") and key not in dump
    revoked = batchserve("keys", "revoke", "batch-client", *db, cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert "revoked" in batchserve("keys", "list", *db, cwd=tmp_path).stdout
    twice = batchserve("keys", "revoke", "batch-client", *db, cwd=tmp_path)
    assert twice.returncode == 1 and "no active key" in twice.stderr


@pytest.mark.parametrize("args, message", [
    (["keys", "create", "x", "--scopes", "write"], "scopes are a comma-separated list"),
    (["keys", "create", "x", "--scopes", "classify", "--burst", "5"], "--burst needs --rate"),
    (["keys", "create", "x", "--scopes", "classify", "--expires", "2001-01-01"], "in the past"),
    (["keys", "create", "anonymous", "--scopes", "classify"], "reserved"),
    (["keys", "create", "x", "--scopes", "classify", "--rate", "fast"], "a rate is COUNT/s"),
])
def test_keys_create_explains_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = batchserve(*args, "--events-path", str(tmp_path / "k.sqlite3"), cwd=tmp_path)
    assert result.returncode in (1, 2) and message in result.stderr and not result.stdout

