"""`athanor serve DIR...`: a web dashboard over run folders, live while their campaigns run.

One page (athanor/web/index.html) over a JSON API: progress and best-so-far, the Pareto front, the
sample table with each sample's lineage, the approval queue, pause and batch size, and the chat.
Every write goes through `athanor.commands`, the path the CLI and the chat take, so one place checks
every command; the conductor carries them out and logs them.

Who: with auth on (the default, and the only choice off loopback) every request names a user of
`athanor users`, by `Authorization: Bearer TOKEN` or by the session cookie the login form sets.
Viewers read; operators decide (403 otherwise). Cookie-borne writes also carry the session's CSRF
token in an X-CSRF-Token header, which a page on another site cannot read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from athanor import commands
from athanor.commands import MAX_BATCH_SIZE, Operator, login_name
from athanor.errors import AthanorError
from athanor.report import status_report
from athanor.spec import Campaign
from athanor.store import Store
from athanor.users import Users

SESSION_COOKIE = "athanor_session"
CSRF_HEADER = "X-CSRF-Token"
POLL_S = 1.0  # how often a live page's stream looks for news in the store
WEB = "web"


@dataclass
class Run:
    """One campaign the dashboard shows: its folder, store and campaign file."""

    folder: Path
    store: Store
    spec: Campaign
    chats: dict[str, Any] = field(default_factory=dict)  # user -> ChatSession, so a "yes" follows its question


def open_runs(folders: list[str | Path]) -> dict[str, Run]:
    from athanor.campaign import open_run

    runs: dict[str, Run] = {}
    for folder in folders:
        store, spec = open_run(folder)
        if store.campaign_id in runs:
            raise AthanorError(f"{folder} holds campaign {store.campaign_id}, already served from "
                               f"{runs[store.campaign_id].folder}")
        runs[store.campaign_id] = Run(Path(folder), store, spec)
    return runs


# --- request bodies ---------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Decision(_Body):
    samples: list[StrictStr] = Field(min_length=1, max_length=1000)
    reason: StrictStr = Field(default="", max_length=2000)


class Revision(_Body):
    sample: StrictStr = Field(max_length=64)
    inputs: dict[StrictStr, StrictFloat | StrictInt | StrictStr] = Field(min_length=1, max_length=100)
    reason: StrictStr = Field(default="", max_length=2000)


class Withdrawal(_Body):
    commands: list[StrictInt] = Field(min_length=1, max_length=1000)


class BatchSize(_Body):
    batch_size: StrictInt = Field(ge=1, le=MAX_BATCH_SIZE)


class ChatMessage(_Body):
    message: StrictStr = Field(max_length=100_000)  # the chat itself refuses long messages, and says so


# --- the application --------------------------------------------------------------------------
def create_app(folders: list[str | Path], auth: bool = True, users: Users | None = None) -> FastAPI:
    runs = open_runs(folders)
    users = users or Users()
    sessions: dict[str, tuple[str, str]] = {}  # cookie -> (token, csrf); the token is checked on every request
    local = Operator(login_name(), login=login_name())
    local_csrf = secrets.token_urlsafe(32)
    app = FastAPI(title="Athanor", docs_url=None, redoc_url=None)

    def identify(request: Request) -> tuple[Operator, str | None] | None:
        """Who makes the request, and the CSRF token a cookie-borne write must carry (None: a bearer)."""
        if not auth:
            return local, local_csrf
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        csrf = None
        if not scheme:
            token, csrf = sessions.get(request.cookies.get(SESSION_COOKIE, ""), ("", None))
        elif scheme.lower() != "bearer":
            return None
        user = users.authenticate(token.strip())
        if user is None:
            return None
        return Operator(user.name, authenticated=True, role=user.role), csrf

    def reader(request: Request) -> Operator:
        found = identify(request)
        if found is None:
            raise HTTPException(401, "a valid token is needed (Authorization: Bearer TOKEN, or log in)",
                                headers={"WWW-Authenticate": "Bearer"})
        return found[0]

    def poster(request: Request) -> Operator:
        """A reader whose request may change something: a cookie (or no auth) needs the CSRF header too."""
        who = reader(request)
        csrf = identify(request)[1]  # type: ignore[index]
        sent = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogateescape")  # bytes: any header compares
        if csrf is not None and not secrets.compare_digest(sent, csrf.encode()):
            raise HTTPException(403, f"the {CSRF_HEADER} header is missing or wrong")
        return who

    def writer(request: Request) -> Operator:
        who = poster(request)
        if not who.can_decide:
            raise HTTPException(403, f"{who.name} is a {who.role}: viewers read, only operators decide")
        return who

    def run_of(campaign: str) -> Run:
        if campaign not in runs:
            raise HTTPException(404, f"no campaign {campaign!r} here; the campaigns are {', '.join(runs)}")
        return runs[campaign]

    def act(campaign: str, do: Callable[[Run], Any]) -> dict[str, Any]:
        run = run_of(campaign)
        try:
            return {"posted": do(run), "queued_commands": run.store.queued_commands()}
        except AthanorError as exc:
            raise HTTPException(409, str(exc)) from None

    # --- pages ----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Any:
        if identify(request) is None:
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(resources.files("athanor.web").joinpath("index.html").read_text())

    @app.get("/login", response_class=HTMLResponse)
    def login_page(failed: int = 0) -> str:
        return resources.files("athanor.web").joinpath("login.html").read_text().replace(
            "<!--failed-->", "<p class=error>That token is unknown or revoked.</p>" if failed else "")

    @app.post("/login")
    def login(token: str = Form(max_length=200)) -> RedirectResponse:
        if users.authenticate(token.strip()) is None:
            return RedirectResponse("/login?failed=1", status_code=303)
        cookie = secrets.token_urlsafe(32)
        sessions[cookie] = (token.strip(), secrets.token_urlsafe(32))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict")
        return response

    @app.post("/logout")
    def logout(request: Request, who: Operator = Depends(poster)) -> RedirectResponse:
        sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # --- reading --------------------------------------------------------------------------
    @app.get("/api/me")
    def me(request: Request, who: Operator = Depends(reader)) -> dict[str, Any]:
        return {"user": who.name, "role": who.role, "can_decide": who.can_decide, "auth": auth,
                "csrf": identify(request)[1]}  # type: ignore[index]

    @app.get("/api/campaigns")
    def campaigns(who: Operator = Depends(reader)) -> list[dict[str, Any]]:
        return [{"folder": str(run.folder), "objectives": [o.model_dump() for o in run.spec.objectives],
                 **status_report(run.store, run.spec)} for run in runs.values()]

    @app.get("/api/campaigns/{campaign}")
    def campaign_status(campaign: str, who: Operator = Depends(reader)) -> dict[str, Any]:
        run = run_of(campaign)
        return {"folder": str(run.folder), "objectives": [o.model_dump() for o in run.spec.objectives],
                "inputs": run.spec.space.input_names, **status_report(run.store, run.spec)}

    @app.get("/api/campaigns/{campaign}/samples")
    def samples(campaign: str, who: Operator = Depends(reader)) -> list[dict[str, Any]]:
        from athanor.lineage import sample_rows

        return sample_rows(run_of(campaign).store)

    @app.get("/api/campaigns/{campaign}/samples/{sample_id}")
    def sample(campaign: str, sample_id: str, who: Operator = Depends(reader)) -> dict[str, Any]:
        from athanor.lineage import lineage

        found = lineage(run_of(campaign).store, sample_id)
        if found is None:
            raise HTTPException(404, f"no sample {sample_id!r} in campaign {campaign}")
        return found

    @app.get("/api/campaigns/{campaign}/progress")
    def progress(campaign: str, who: Operator = Depends(reader)) -> dict[str, Any]:
        from athanor.lineage import progress as progress_of

        run = run_of(campaign)
        return progress_of(run.store, run.spec)

    @app.get("/api/campaigns/{campaign}/stream")
    async def stream(campaign: str, request: Request, who: Operator = Depends(reader)) -> StreamingResponse:
        run = run_of(campaign)

        async def news() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                now = await asyncio.to_thread(_signature, run.store)
                if now != last:
                    last = now
                    yield f"event: update\ndata: {json.dumps(now)}\n\n"
                else:
                    yield ": still here\n\n"  # keeps proxies from closing an idle stream
                await asyncio.sleep(POLL_S)

        return StreamingResponse(news(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    # --- deciding -------------------------------------------------------------------------
    @app.post("/api/campaigns/{campaign}/approve")
    def approve(campaign: str, body: Decision, who: Operator = Depends(writer)) -> dict[str, Any]:
        return act(campaign, lambda run: commands.decide(run.store, run.spec, body.samples, True, who, body.reason,
                                                         channel=WEB))

    @app.post("/api/campaigns/{campaign}/reject")
    def reject(campaign: str, body: Decision, who: Operator = Depends(writer)) -> dict[str, Any]:
        if not body.reason.strip():
            raise HTTPException(409, "a rejection needs a reason")
        return act(campaign, lambda run: commands.decide(run.store, run.spec, body.samples, False, who,
                                                         body.reason.strip(), channel=WEB))

    @app.post("/api/campaigns/{campaign}/edit")
    def edit(campaign: str, body: Revision, who: Operator = Depends(writer)) -> dict[str, Any]:
        return act(campaign, lambda run: commands.edit(run.store, run.spec, body.sample, body.inputs, who,
                                                       body.reason, channel=WEB))

    @app.post("/api/campaigns/{campaign}/pause")
    def pause(campaign: str, who: Operator = Depends(writer)) -> dict[str, Any]:
        return act(campaign, lambda run: commands.control(run.store, run.spec, "pause", who, WEB))

    @app.post("/api/campaigns/{campaign}/resume")
    def resume(campaign: str, who: Operator = Depends(writer)) -> dict[str, Any]:
        return act(campaign, lambda run: commands.control(run.store, run.spec, "resume", who, WEB))

    @app.post("/api/campaigns/{campaign}/batch-size")
    def batch_size(campaign: str, body: BatchSize, who: Operator = Depends(writer)) -> dict[str, Any]:
        return act(campaign, lambda run: commands.control(run.store, run.spec, "batch_size", who, WEB,
                                                          batch_size=body.batch_size))

    @app.post("/api/campaigns/{campaign}/withdraw")
    def withdraw(campaign: str, body: Withdrawal, who: Operator = Depends(writer)) -> dict[str, Any]:
        run = run_of(campaign)
        withdrawn, problems = commands.withdraw(run.store, body.commands, who)
        if problems and not withdrawn:
            raise HTTPException(409, "; ".join(problems))
        return {"withdrawn": [c["command_id"] for c in withdrawn], "problems": problems,
                "queued_commands": run.store.queued_commands()}

    @app.post("/api/campaigns/{campaign}/chat")
    def chat(campaign: str, body: ChatMessage, who: Operator = Depends(poster)) -> dict[str, Any]:
        from athanor.chat import TRANSCRIPT, ChatSession
        from athanor.chat_model import make_model

        run = run_of(campaign)
        session = run.chats.get(who.name)
        if session is None or session.operator != who:
            model, _ = make_model(configured=run.spec.approval.chat_model)
            session = run.chats[who.name] = ChatSession(run.store, run.spec, who, model, run.folder / TRANSCRIPT)
        reply = session.send(body.message)
        return {"reply": str(reply), "outcome": reply.outcome}

    return app


def _signature(store: Store) -> dict[str, int]:
    """What changes when anything happens in a campaign: a page refreshes when it does."""
    return {"events": store.count_events(), "queued": len(store.pending_commands())}


def serve(folders: list[str], host: str = "127.0.0.1", port: int = 8765, auth: bool = True) -> int:
    import uvicorn

    if not auth and not _loopback(host):
        raise AthanorError(f"--no-auth serves only loopback; {host} is not: drop --no-auth and give operators "
                           "tokens with `athanor users add NAME --role operator`")
    users = Users()
    app = create_app(folders, auth=auth, users=users)
    if auth and not users.any():
        raise AthanorError("no users yet: add one with `athanor users add NAME --role operator` (it prints the "
                           "token to log in with), or serve loopback only with --no-auth")
    port = port or _free_port(host)
    print(f"athanor: dashboard on http://{host}:{port}/ for {len(folders)} campaign(s)"
          f"{'' if auth else ' (no auth: loopback only)'}", flush=True)
    # Live pages hold their event streams open: on Ctrl-C, wait for them 2 s, not for ever.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
