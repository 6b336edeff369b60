"""``chat-tenant`` as operators run it: a real subprocess against the test's database."""

from __future__ import annotations

import os
import pathlib
import subprocess

from tests.conftest import coverage_env


def tenant(venv_bin: pathlib.Path, cwd: pathlib.Path, db_source: str | None,
           *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), **coverage_env()}
    if db_source is not None:
        env["DB_SOURCE"] = db_source
    return subprocess.run([str(venv_bin / "chat-tenant"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_create_list_show_disable_enable_set_limit(venv_bin, tmp_path, db_source) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return tenant(venv_bin, tmp_path, db_source, *args)

    created = run("create", "acme")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("acme\tactive\tlimits={}")
    again = run("create", "acme")
    assert again.returncode == 1 and "exists already" in again.stderr
    listed = run("list")
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        ["acme", "active"], ["default", "active"]]
    assert run("disable", "acme").stdout.startswith("acme\tdisabled")
    assert run("show", "acme").stdout.startswith("acme\tdisabled")
    assert run("enable", "acme").stdout.startswith("acme\tactive")
    limited = run("set-limit", "acme", "max_members", "5")
    assert '"max_members":5' in limited.stdout, limited.stderr
    run("set-limit", "acme", "max_message_length", "100")
    shown = run("show", "acme").stdout
    assert 'limits={"max_members":5,"max_message_length":100}' in shown
    cleared = run("set-limit", "acme", "max_members", "default")
    assert 'limits={"max_message_length":100}' in cleared.stdout


def test_refusals_and_exit_codes(venv_bin, tmp_path, db_source) -> None:
    missing = tenant(venv_bin, tmp_path, db_source, "show", "nobody")
    assert missing.returncode == 1 and "no tenant 'nobody'" in missing.stderr
    assert tenant(venv_bin, tmp_path, db_source, "disable", "nobody").returncode == 1
    bad_id = tenant(venv_bin, tmp_path, db_source, "create", "Not Valid")
    assert bad_id.returncode == 2 and "a tenant id is" in bad_id.stderr
    bad_value = tenant(venv_bin, tmp_path, db_source, "set-limit", "default", "max_members", "-1")
    assert bad_value.returncode == 2 and "positive integer" in bad_value.stderr
    bad_name = tenant(venv_bin, tmp_path, db_source, "set-limit", "default", "speed", "1")
    assert bad_name.returncode == 2 and "invalid choice" in bad_name.stderr
    no_db = tenant(venv_bin, tmp_path, None, "list")
    assert no_db.returncode == 2 and "DB_SOURCE is not set" in no_db.stderr
    unreachable = tenant(venv_bin, tmp_path, "postgresql://u:secret-pw@127.0.0.1:1/x", "list")
    assert unreachable.returncode == 3
    assert "secret-pw" not in unreachable.stderr + unreachable.stdout
    for result in (missing, bad_id, bad_value, no_db, unreachable):
        assert "Traceback" not in result.stderr
