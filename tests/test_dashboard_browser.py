"""The dashboard in a real browser (Debian's chromium, driven by Playwright) over a live campaign:
log in, see proposals wait, approve one from the page, see the campaign advance."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from athanor.campaign import open_run
from athanor.ioc import free_port
from athanor.users import Users
from conftest import write_campaign
from helpers_live import drive_to_the_end, start
from helpers_proc import wait_for

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def live_campaign(tmp_path, ray_address):
    """A campaign under `always` running in this process: proposals wait for an operator."""
    config = write_campaign(tmp_path / "gated.yaml", budget=4, batch_size=2, approval="always")
    out = tmp_path / "run"
    runner, result = start(config, out, ray_address)
    try:
        yield out, result
    finally:
        drive_to_the_end(out, runner, user="cleanup")


@pytest.fixture
def dashboard(live_campaign, tmp_path):
    out, _ = live_campaign
    home = tmp_path / "home"
    token = Users(home).add("ada", "operator")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "athanor", "serve", str(out), "--port", str(port)],
                              env={**os.environ, "ATHANOR_HOME": str(home)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert server.poll() is None, server.stdout.read()
        try:
            return httpx.get(f"{url}/login", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "the dashboard to listen")
        yield url, token, out
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by .ci/run")
def test_log_in_see_proposals_approve_one_and_see_the_campaign_advance(dashboard, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token, out = dashboard
    campaign = open_run(out)[0].campaign_id
    wait_for(lambda: any(s["awaiting_approval"] for s in open_run(out)[0].samples()), 60, "a proposal to wait")
    # an approval without a token is refused, and so is one with a forged token
    for headers in ({}, {"Authorization": "Bearer forged"}):
        refused = httpx.post(f"{url}/api/campaigns/{campaign}/approve", json={"samples": ["S0001"]}, headers=headers)
        assert refused.status_code == 401
    # the stream a live page listens to sends news
    with httpx.stream("GET", f"{url}/api/campaigns/{campaign}/stream", headers={"Authorization": f"Bearer {token}"},
                      timeout=10) as stream:
        assert next(stream.iter_lines()) == "event: update"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        expect(page).to_have_url(f"{url}/login")
        page.fill("#token", "not a token")
        page.click("button[type=submit]")
        expect(page.locator(".error")).to_contain_text("unknown or revoked")
        page.fill("#token", token)
        page.click("button[type=submit]")
        expect(page.locator("#user")).to_have_text("ada (operator)")
        row = page.locator("#queue tbody tr[data-sample]").first
        expect(row).to_be_visible(timeout=30_000)
        sample_id = row.get_attribute("data-sample")
        row.locator("button.approve").click()
        expect(page.locator("#message")).to_contain_text(f"approved {sample_id}")
        # the conductor carries it out and the page, told by the stream, shows the sample moving on
        state = page.locator(f"#samples tbody tr[data-sample={sample_id}] .state")
        expect(state).to_have_text("learned", timeout=60_000)
        expect(page.locator(f"#queue tbody tr[data-sample={sample_id}]")).to_have_count(0)
        # the chat on the page: several proposals wait for the operator's yes
        page.fill("#chat-input", "approve all")
        page.press("#chat-input", "Enter")
        expect(page.locator("#chat-log .needs_yes")).to_contain_text("Reply 'yes'")
        page.fill("#chat-input", "yes")
        page.click("#chat-send")
        expect(page.locator("#chat-log .done")).to_contain_text("approved")
        expect(page.locator("#status")).to_contain_text("completed", timeout=90_000)
        expect(page.locator("#progress-plot circle")).to_have_count(4)
        page.locator(f"#samples tbody tr[data-sample={sample_id}]").click()
        expect(page.locator("#lineage")).to_contain_text("approved by ada (token) via web")
        expect(page.locator("#lineage")).to_contain_text("Measurement")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        if os.environ.get("ATHANOR_SCREENSHOT"):  # how the README's picture is made
            shutil.copy(tmp_path / "dashboard.png", os.environ["ATHANOR_SCREENSHOT"])
        browser.close()
    decisions = open_run(out)[0].approvals()
    (web,) = [a for a in decisions if a["channel"] == "web"]
    assert (web["sample_id"], web["decided_by"], web["authenticated"]) == (sample_id, "ada", True)
    assert {a["decided_by"] for a in decisions if a["channel"] == "chat"} == {"ada"}
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
