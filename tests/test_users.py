"""`athanor users`: tokens shown once and kept hashed; revoked at once; viewers read, operators decide."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from athanor import users as users_module
from athanor.errors import AthanorError
from athanor.users import ROLES, User, Users, home


def cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    users_module.add_parser(sub)
    args = p.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def athanor_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_home_is_athanor_home_or_dot_athanor(tmp_path, monkeypatch):
    assert home({"ATHANOR_HOME": str(tmp_path)}) == tmp_path
    assert home({}) == Path.home() / ".athanor"
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path / "x"))
    assert home() == tmp_path / "x" and Users().path == tmp_path / "x" / "users.json"
    assert ROLES == ("operator", "viewer")


def test_add_prints_the_token_once_and_it_names_its_user(athanor_home, capsys):
    assert cli("users", "add", "ada", "--role", "operator") == 0
    out = capsys.readouterr().out
    (token,) = re.findall(r"ath_[A-Za-z0-9_-]{43}", out)
    assert out.count(token) == 1
    ada = Users().authenticate(token)
    assert ada == User("ada", "operator", ada.created_at) and ada.can_decide
    assert cli("users", "add", "vic", "--role", "viewer") == 0
    viewer = capsys.readouterr().out.strip().splitlines()[-1]
    assert viewer != token and Users().authenticate(viewer).name == "vic"
    assert not Users().authenticate(viewer).can_decide
    text = (athanor_home / "users.json").read_text()
    assert token not in text and viewer not in text and token[4:] not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text  # the digest, by an independent hash
    assert (athanor_home / "users.json").stat().st_mode & 0o777 == 0o600
    assert (athanor_home / "users.lock").exists()
    assert [p.name for p in athanor_home.iterdir() if p.name.startswith(".users-")] == []  # no temp files left


@pytest.mark.parametrize("wrong", [None, "", "ath_", "x" * 1_000_000, " ", "\x00", "ath_\udcff", 42, b"ath_"])
def test_anything_but_a_token_names_nobody(tmp_path, wrong):
    users = Users(tmp_path)
    token = users.add("ada", "operator")
    assert users.authenticate(wrong) is None
    assert users.authenticate(token + "x" * 1_000_000) is None  # a real token as a prefix is not enough
    assert users.authenticate(token.encode().decode()).name == "ada"


def test_another_users_token_one_character_off_names_nobody(tmp_path):
    users = Users(tmp_path)
    users.add("ada", "operator")
    vic = users.add("vic", "viewer")
    for i in (4, len(vic) // 2, len(vic) - 1):
        off = vic[:i] + ("A" if vic[i] != "A" else "B") + vic[i + 1:]
        assert users.authenticate(off) is None
    assert users.authenticate(vic[:-1]) is None and users.authenticate(" " + vic) is None
    assert users.authenticate(vic).name == "vic"


def test_revoked_tokens_stop_working_at_once(tmp_path):
    users = Users(tmp_path)
    token, other = users.add("ada", "operator"), users.add("bob", "operator")
    revoked = users.revoke("ada")
    assert revoked.revoked_at and not revoked.can_decide
    assert Users(tmp_path).authenticate(token) is None  # a fresh reader sees it too
    assert users.authenticate(other).can_decide and users.any()
    assert users.revoke("ada").revoked_at == revoked.revoked_at  # revoking twice keeps the first time
    users.revoke("bob")
    assert not users.any() and all(not u.can_decide for u in users.list())
    fresh = users.add("ada", "viewer")  # a revoked name may be issued anew, with a new token
    assert users.authenticate(fresh).role == "viewer" and users.authenticate(token) is None


def test_any_is_false_with_no_users(tmp_path):
    assert not Users(tmp_path / "nowhere").any() and Users(tmp_path / "nowhere").list() == []
    assert not (tmp_path / "nowhere").exists()  # reading creates nothing


@pytest.mark.parametrize("name, problem", [("", "empty"), ("a" * 65, "at most 64"), ("policy:auto", "policy:"),
                                           ("x y", "only letters"), ("../etc", "only letters"),
                                           ("ada\n", "only letters"), ("é", "only letters"), ("a/b", "only letters")])
def test_bad_names_are_refused_naming_the_problem(tmp_path, name, problem):
    with pytest.raises(AthanorError, match=re.escape(problem)):
        Users(tmp_path).add(name, "operator")
    assert Users(tmp_path).list() == []
    assert not (tmp_path.parent / "etc").exists()


def test_good_names_are_accepted(tmp_path):
    users = Users(tmp_path)
    for name in ("a", "a" * 64, "ada.lovelace@lab-1_x", "policy", "Policy-auto"):
        assert users.authenticate(users.add(name, "viewer")).name == name


def test_duplicates_bad_roles_and_unknown_users_are_refused(tmp_path):
    users = Users(tmp_path)
    token = users.add("ada", "operator")
    with pytest.raises(AthanorError, match="exists"):
        users.add("ada", "viewer")
    for role in ("admin", "", "Operator", None):
        with pytest.raises(AthanorError, match="role"):
            users.add("bob", role)
    with pytest.raises(AthanorError, match="no user 'bob'"):
        users.revoke("bob")
    assert [u.name for u in users.list()] == ["ada"] and users.authenticate(token).role == "operator"


@pytest.mark.parametrize("content", ["{", "[]", "", "null", '{"users": []}', '{"users": {"ada": {"role": "operator"}}}',
                                     '{"users": {"ada": {"role": "god", "token_sha256": "' + "0" * 64
                                     + '", "created_at": "x"}}}',
                                     '{"users": {"ada": {"role": "operator", "token_sha256": "\u00e9' + "0" * 63
                                     + '", "created_at": "x"}}}', "\xff\xfe"])
def test_a_damaged_users_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "users.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    for call in (lambda u: u.authenticate("ath_anything"), Users.list, Users.any,
                 lambda u: u.add("bob", "operator"), lambda u: u.revoke("ada")):
        with pytest.raises(AthanorError, match=re.escape(str(path))):
            call(Users(tmp_path))
    assert path.read_text(encoding="utf-8", errors="surrogateescape") == content  # left for the user to fix


def test_an_unreadable_users_file_is_one_clear_error(tmp_path):
    (tmp_path / "users.json").mkdir()
    with pytest.raises(AthanorError, match=re.escape(str(tmp_path / "users.json"))):
        Users(tmp_path).list()


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    users = Users(tmp_path)
    token = users.add("ada", "operator")
    before = (tmp_path / "users.json").read_text()

    def broken_dump(obj, f, **kw):
        f.write('{"users": {"half')
        raise OSError("disk full")

    monkeypatch.setattr(users_module.json, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        users.add("bob", "operator")
    monkeypatch.undo()
    assert (tmp_path / "users.json").read_text() == before and users.authenticate(token).name == "ada"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.json", "users.lock"]


def test_concurrent_adds_all_land(tmp_path):
    script = "import sys; from athanor.users import Users; print(Users(sys.argv[1]).add(sys.argv[2], 'operator'))"
    root = str(Path(__file__).resolve().parents[1])  # the children import this checkout's athanor
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "home"), f"user{i}"],
                              stdout=subprocess.PIPE, text=True, env=env) for i in range(8)]
    tokens = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 8
    users = Users(tmp_path / "home")
    assert sorted(u.name for u in users.list()) == sorted(f"user{i}" for i in range(8))
    assert [users.authenticate(t).name for t in tokens] == [f"user{i}" for i in range(8)]


def test_list_and_revoke_on_the_command_line(athanor_home, capsys):
    cli("users", "add", "ada", "--role", "operator")
    token = capsys.readouterr().out.strip().splitlines()[-1]
    cli("users", "add", "vic", "--role", "viewer")
    capsys.readouterr()
    assert cli("users", "revoke", "ada") == 0
    assert "ada" in capsys.readouterr().out and Users().authenticate(token) is None
    assert cli("users", "list", "--json") == 0
    listed = capsys.readouterr().out
    assert "sha" not in listed.lower() and token not in listed
    rows = json.loads(listed)
    assert [set(r) for r in rows] == [{"name", "role", "created_at", "revoked_at"}] * 2
    assert [(r["name"], r["role"], bool(r["revoked_at"])) for r in rows] == [("ada", "operator", True),
                                                                              ("vic", "viewer", False)]
    assert cli("users", "list") == 0
    ada_line, vic_line = capsys.readouterr().out.strip().splitlines()
    assert ada_line.split("\t")[:2] == ["ada", "operator"] and f"revoked {rows[0]['revoked_at']}" in ada_line
    assert rows[0]["created_at"] in ada_line
    assert vic_line.split("\t")[:2] == ["vic", "viewer"] and "revoked" not in vic_line


def test_command_line_errors_are_athanor_errors(athanor_home, capsys):
    cli("users", "add", "ada", "--role", "operator")
    capsys.readouterr()
    with pytest.raises(AthanorError, match="exists"):
        cli("users", "add", "ada", "--role", "operator")
    with pytest.raises(AthanorError, match="no user 'nobody'"):
        cli("users", "revoke", "nobody")
    with pytest.raises(AthanorError, match="policy:"):
        cli("users", "add", "policy:auto", "--role", "operator")
    assert "ath_" not in capsys.readouterr().out  # nothing printed for a refused add
    with pytest.raises(SystemExit):
        cli("users", "add", "bob", "--role", "admin")
    with pytest.raises(SystemExit):
        cli("users", "add", "bob")  # a role must be chosen


def test_the_command_line_speaks_for_the_token_holder(run_dir, tmp_path, monkeypatch, capsys):
    from athanor.cli import main
    from athanor.commands import local_operator

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
