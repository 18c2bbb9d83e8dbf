"""The dashboard's JSON API: who may read and decide, the one commands path, lineage and progress."""

from __future__ import annotations

import json

import pytest
import torch
from botorch.utils.multi_objective.pareto import is_non_dominated
from fastapi.testclient import TestClient

from athanor.cli import main
from athanor.lineage import pareto_front
from athanor.serve import CSRF_HEADER, create_app
from athanor.spec import parse_campaign
from athanor.users import Users
from helpers_gated import CAMP, inbox

API = f"/api/campaigns/{CAMP}"


@pytest.fixture
def lab(run_dir, tmp_path):
    users = Users(tmp_path / "home")
    tokens = {"ada": users.add("ada", "operator"), "vic": users.add("vic", "viewer")}
    client = TestClient(create_app([run_dir], users=users))
    return client, tokens, users, run_dir


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_reads_and_writes_need_a_valid_token(lab):
    client, tokens, users, run_dir = lab
    assert client.get("/api/campaigns").status_code == 401
    assert client.post(f"{API}/approve", json={"samples": ["S0003"]}).status_code == 401
    for wrong in ("", "nope", tokens["ada"][:-1] + ("x" if tokens["ada"][-1] != "x" else "y"), "x" * 100_000):
        assert client.post(f"{API}/approve", json={"samples": ["S0003"]}, headers=bearer(wrong)).status_code == 401
    assert client.post(f"{API}/approve", json={"samples": ["S0003"]},
                       headers={"Authorization": f"Basic {tokens['ada']}"}).status_code == 401
    # a viewer reads and is refused every write
    assert client.get("/api/campaigns", headers=bearer(tokens["vic"])).status_code == 200
    for path, body in (("approve", {"samples": ["S0003"]}), ("reject", {"samples": ["S0003"], "reason": "x"}),
                       ("pause", None), ("batch-size", {"batch_size": 2}),
                       ("edit", {"sample": "S0003", "inputs": {"Sn": 0.7, "Pb": 0.3}})):
        response = client.post(f"{API}/{path}", json=body, headers=bearer(tokens["vic"]))
        assert response.status_code == 403, path
    assert inbox(run_dir) == []
    users.revoke("ada")  # a revoked token stops working at once
    assert client.post(f"{API}/approve", json={"samples": ["S0003"]}, headers=bearer(tokens["ada"])).status_code == 401


def test_an_operator_decides_through_the_commands_path(lab):
    client, tokens, _, run_dir = lab
    ada = bearer(tokens["ada"])
    response = client.post(f"{API}/approve", json={"samples": ["S0003"]}, headers=ada)
    assert response.status_code == 200 and response.json()["posted"] == ["S0003"]
    (command,) = inbox(run_dir)
    assert (command["action"], command["sample_id"], command["user"], command["channel"], command["authenticated"]) == \
        ("approve", "S0003", "ada", "web", True)
    # the checks the CLI and the chat get: all or nothing, waiting samples only, a reason to reject
    for path, body, problem in (
            ("approve", {"samples": ["S0004", "S0999"]}, "no sample 'S0999'"),
            ("approve", {"samples": ["S0001"]}, "S0001 is characterized, not awaiting approval"),
            ("approve", {"samples": ["S0003"]}, "already has a approve decision"),
            ("reject", {"samples": ["S0004"], "reason": "  "}, "needs a reason"),
            ("edit", {"sample": "S0004", "inputs": {"Pb": 0.9, "Sn": 0.1}}, "Pb=0.9 is outside [0.0, 0.5]")):
        response = client.post(f"{API}/{path}", json=body, headers=ada)
        assert response.status_code == 409 and problem in response.json()["detail"], (path, response.json())
    for path, body in (("approve", {"samples": "S0004"}), ("approve", {"samples": []}),
                       ("approve", {"samples": ["S0004"], "all": True}), ("approve", {"samples": [4]}),
                       ("approve", {"samples": ["S0004"] * 1001}), ("batch-size", {"batch_size": 0}),
                       ("batch-size", {"batch_size": True}), ("edit", {"sample": "S0004", "inputs": {"Sn": [1]}})):
        assert client.post(f"{API}/{path}", json=body, headers=ada).status_code == 422, (path, body)
    assert client.post("/api/campaigns/nope/approve", json={"samples": ["S0004"]}, headers=ada).status_code == 404
    assert len(inbox(run_dir)) == 1
    assert client.post(f"{API}/reject", json={"samples": ["S0004"], "reason": "Ge too high"}, headers=ada).status_code == 200
    assert client.post(f"{API}/pause", headers=ada).status_code == 200
    assert client.post(f"{API}/batch-size", json={"batch_size": 2}, headers=ada).status_code == 200
    assert [(c["action"], c.get("sample_id"), c.get("reason")) for c in inbox(run_dir)] == [
        ("approve", "S0003", ""), ("reject", "S0004", "Ge too high"), ("pause", None, ""), ("batch_size", None, "")]


def test_status_lists_the_commands_not_yet_carried_out(lab, capsys):
    client, tokens, _, run_dir = lab
    client.post(f"{API}/approve", json={"samples": ["S0005"]}, headers=bearer(tokens["ada"]))
    assert main(["status", str(run_dir), "--json"]) == 0
    (queued,) = json.loads(capsys.readouterr().out)["queued_commands"]
    assert {k: queued[k] for k in ("action", "sample_id", "user", "channel", "authenticated")} == \
        {"action": "approve", "sample_id": "S0005", "user": "ada", "channel": "web", "authenticated": True}
    assert queued["posted_at"] and "transcript" not in queued


def test_a_queued_decision_is_withdrawn_from_the_page(lab):
    client, tokens, _, run_dir = lab
    ada = bearer(tokens["ada"])
    queued = client.post(f"{API}/approve", json={"samples": ["S0003"]}, headers=ada).json()["queued_commands"]
    (command_id,) = [q["command_id"] for q in queued]
    assert client.post(f"{API}/withdraw", json={"commands": [command_id]}, headers=bearer(tokens["vic"])).status_code == 403
    response = client.post(f"{API}/withdraw", json={"commands": [command_id]}, headers=ada)
    assert response.status_code == 200 and response.json()["withdrawn"] == [command_id] and inbox(run_dir) == []
    again = client.post(f"{API}/withdraw", json={"commands": [command_id]}, headers=ada)
    assert again.status_code == 409 and "is not waiting" in again.json()["detail"]
    assert client.post(f"{API}/withdraw", json={"commands": ["1"]}, headers=ada).status_code == 422


def test_a_cookie_session_needs_the_csrf_header_to_write(lab):
    client, tokens, _, run_dir = lab
    failed = client.post("/login", data={"token": "wrong"}, follow_redirects=False)
    assert failed.status_code == 303 and failed.headers["location"] == "/login?failed=1"
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    logged_in = client.post("/login", data={"token": tokens["ada"]}, follow_redirects=False)
    assert logged_in.status_code == 303 and "httponly" in logged_in.headers["set-cookie"].lower()
    me = client.get("/api/me").json()
    assert me["user"] == "ada" and me["can_decide"] and me["csrf"]
    assert "Awaiting approval" in client.get("/").text
    assert client.post(f"{API}/approve", json={"samples": ["S0003"]}).status_code == 403  # no CSRF header
    for forged in ("forged", me["csrf"][:-1], "é".encode() * 20):
        assert client.post(f"{API}/approve", json={"samples": ["S0003"]}, headers={CSRF_HEADER: forged}).status_code == 403
    assert inbox(run_dir) == []
    ok = client.post(f"{API}/approve", json={"samples": ["S0003"]}, headers={CSRF_HEADER: me["csrf"]})
    assert ok.status_code == 200 and inbox(run_dir)[0]["user"] == "ada"


def test_lineage_and_progress(lab):
    client, tokens, _, _ = lab
    vic = bearer(tokens["vic"])
    rows = {r["id"]: r for r in client.get(f"{API}/samples", headers=vic).json()}
    assert rows["S0003"]["awaiting_approval"] and rows["S0003"]["acquisition_value"] == 0.5
    assert rows["S0001"]["decision"]["decided_by"] == "policy:test"
    measured = client.get(f"{API}/samples/S0001", headers=vic).json()
    assert measured["proposal"]["strategy"] == "sobol" and measured["measurement"]["values"] == {"gap": 1.3}
    assert measured["recipe"]["route"] == "direct" and measured["decisions"][0]["approved"]
    proposed = client.get(f"{API}/samples/S0003", headers=vic).json()
    assert proposed["proposal"]["model_version"] == "gp-1" and proposed["proposal"]["acquisition_value"] == 0.5
    assert proposed["measurement"] is None and proposed["decisions"] == []
    assert client.get(f"{API}/samples/S0999", headers=vic).status_code == 404
    progress = client.get(f"{API}/progress", headers=vic).json()
    assert [p["values"]["gap"] for p in progress["points"]] == [1.3, 1.5]
    assert [p["best_so_far"] for p in progress["points"]] == [1.3, 1.5] and progress["pareto"] == []


def test_the_pareto_front_agrees_with_botorch():
    spec = parse_campaign("""
campaign: two
space: {parameters: [{type: continuous, name: x, low: 0, high: 1}]}
objectives: [{name: a, direction: maximize}, {name: b, direction: minimize}]
budget: {experiments: 50}
""")
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(60, 2, generator=generator, dtype=torch.float64)
    samples = [{"id": f"S{i:04d}", "values": {"a": float(a), "b": float(b)}} for i, (a, b) in enumerate(values)]
    samples.append({"id": "S0999", "values": {"a": 0.5}})  # b not measured: not on either side
    expected = is_non_dominated(torch.stack([values[:, 0], -values[:, 1]], dim=-1))
    assert pareto_front(samples, spec) == [f"S{i:04d}" for i in range(60) if expected[i]]


def test_chat_on_the_page_uses_the_same_session_rules(lab):
    client, tokens, _, run_dir = lab
    vic, ada = bearer(tokens["vic"]), bearer(tokens["ada"])
    refused = client.post(f"{API}/chat", json={"message": "approve 3"}, headers=vic).json()
    assert refused["outcome"] == "refused" and "viewers read" in refused["reply"]
    assert client.post(f"{API}/chat", json={"message": "status"}, headers=vic).json()["outcome"] == "answered"
    asked = client.post(f"{API}/chat", json={"message": "approve 3 and 4"}, headers=ada).json()
    assert asked["outcome"] == "needs_yes" and inbox(run_dir) == []
    assert client.post(f"{API}/chat", json={"message": "yes"}, headers=vic).json()["outcome"] != "done"  # not vic's
    assert inbox(run_dir) == []
    asked = client.post(f"{API}/chat", json={"message": "approve 3 and 4"}, headers=ada).json()
    done = client.post(f"{API}/chat", json={"message": "yes"}, headers=ada).json()
    assert done["outcome"] == "done" and [c["sample_id"] for c in inbox(run_dir)] == ["S0003", "S0004"]
    assert client.post(f"{API}/chat", json={"message": "x" * 200_000}, headers=ada).status_code == 422


def test_serve_refuses_to_open_up_without_auth(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path / "empty-home"))
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--no-auth"]) == 2
    assert "--no-auth serves only loopback" in capsys.readouterr().err
    assert main(["serve", str(run_dir)]) == 2
    assert "no users yet" in capsys.readouterr().err
    assert main(["serve", str(run_dir), str(run_dir)]) == 2
    assert "already served" in capsys.readouterr().err
