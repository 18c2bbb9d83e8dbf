"""`athanor users`: tokens shown once and kept hashed; revoked at once; viewers read, operators decide."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from athanor.cli import main
from athanor.commands import local_operator
from athanor.errors import AthanorError
from athanor.users import Users


def test_a_token_is_shown_once_kept_hashed_and_names_its_user(tmp_path):
    users = Users(tmp_path)
    token = users.add("ada", "operator")
    viewer = users.add("vic", "viewer")
    text = (tmp_path / "users.json").read_text()
    assert token not in text and viewer not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text  # the digest, by an independent hash
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    ada, vic = users.authenticate(token), users.authenticate(viewer)
    assert (ada.name, ada.role, ada.can_decide) == ("ada", "operator", True)
    assert (vic.name, vic.role, vic.can_decide) == ("vic", "viewer", False)


@pytest.mark.parametrize("wrong", [None, "", "ath_", "x" * 1_000_000, " ", "\x00", "ath_\udcff"])
def test_anything_but_a_token_names_nobody(tmp_path, wrong):
    users = Users(tmp_path)
    users.add("ada", "operator")
    assert users.authenticate(wrong) is None


def test_a_token_one_character_off_or_revoked_names_nobody(tmp_path):
    users = Users(tmp_path)
    token = users.add("ada", "operator")
    off = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert users.authenticate(off) is None and users.authenticate(token.upper()) is None
    users.revoke("ada")
    assert users.authenticate(token) is None and not users.list()[0].can_decide and not users.any()
    fresh = users.add("ada", "viewer")  # a revoked name may be issued anew
    assert users.authenticate(fresh).role == "viewer" and users.authenticate(token) is None


@pytest.mark.parametrize("name", ["", "a" * 65, "policy:auto", "x y", "../etc", "ada\n", "é"])
def test_bad_names_and_roles_are_refused(tmp_path, name):
    with pytest.raises(AthanorError):
        Users(tmp_path).add(name, "operator")
    assert not (tmp_path / "users.json").exists() or Users(tmp_path).list() == []


def test_duplicates_bad_roles_and_unknown_users_are_refused(tmp_path):
    users = Users(tmp_path)
    users.add("ada", "operator")
    with pytest.raises(AthanorError, match="exists"):
        users.add("ada", "viewer")
    with pytest.raises(AthanorError, match="role 'admin'"):
        users.add("bob", "admin")
    with pytest.raises(AthanorError, match="no user 'bob'"):
        users.revoke("bob")


@pytest.mark.parametrize("content", ["{", "[]", '{"users": {"ada": {"role": "operator"}}}', "\xff\xfe"])
def test_a_damaged_users_file_is_one_clear_error(tmp_path, content):
    (tmp_path / "users.json").write_text(content, errors="surrogateescape")
    with pytest.raises(AthanorError, match="users.json"):
        Users(tmp_path).authenticate("ath_anything")


def test_concurrent_adds_both_land(tmp_path):
    script = "import sys; from athanor.users import Users; Users(sys.argv[1]).add(sys.argv[2], 'operator')"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"user{i}"]) for i in range(6)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    assert sorted(u.name for u in Users(tmp_path).list()) == [f"user{i}" for i in range(6)]


def test_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    assert main(["users", "add", "ada", "--role", "operator"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert Users(tmp_path).authenticate(token).name == "ada"
    assert main(["users", "add", "ada", "--role", "operator"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["users", "list", "--json"]) == 0
    listed = capsys.readouterr().out
    assert json.loads(listed)[0]["name"] == "ada" and token not in listed and "sha" not in listed
    assert main(["users", "revoke", "ada"]) == 0 and Users(tmp_path).authenticate(token) is None
    assert main(["users", "list"]) == 0 and "revoked" in capsys.readouterr().out
    assert main(["users", "revoke", "nobody"]) == 2


def test_the_command_line_speaks_for_the_token_holder(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path / "home"))
    users = Users(tmp_path / "home")
    ada, vic = users.add("ada", "operator"), users.add("vic", "viewer")
    monkeypatch.setenv("ATHANOR_TOKEN", ada)
    who = local_operator()
    assert (who.name, who.authenticated, who.can_decide) == ("ada", True, True) and who.login
    assert main(["approve", str(run_dir), "S0003", "--user", "mallory"]) == 2  # not the token's holder
    assert "not the holder of ATHANOR_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("ATHANOR_TOKEN", vic)
    assert main(["approve", str(run_dir), "S0003"]) == 2
    assert "viewers read" in capsys.readouterr().err
    monkeypatch.setenv("ATHANOR_TOKEN", "ath_forged")
    assert main(["approve", str(run_dir), "S0003"]) == 2
    assert "not a valid token" in capsys.readouterr().err
    monkeypatch.setenv("ATHANOR_TOKEN", ada)
    assert main(["approve", str(run_dir), "S0003"]) == 0
    assert main(["status", str(run_dir), "--json"]) == 0
    (queued,) = json.loads(capsys.readouterr().out.split("\n", 1)[1])["queued_commands"]
    assert (queued["user"], queued["authenticated"]) == ("ada", True) and queued["login"]
