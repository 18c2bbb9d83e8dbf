"""One conductor per campaign: a lease in the store, kept alive by a heartbeat.

The conductor takes the lease before it touches the campaign (before `--resume` rebuilds the derived
tables) and renews it every `HEARTBEAT_S`. A second conductor finds it held and stops with one line
naming the holder. A lease whose heartbeat is older than `STALE_S` — or, on the same host, whose holder
process no longer exists — is taken over, and the takeover is logged. Every change is one conditional
UPDATE or INSERT, so two conductors racing for a lease cannot both win, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from athanor.errors import AthanorError
from athanor.messages import utcnow
from athanor.tables import LeaseRow

HEARTBEAT_S = 2.0
STALE_S = 30.0


class CampaignHeld(AthanorError):
    """Another conductor holds the campaign."""


class LeaseLost(AthanorError):
    """This conductor's lease was taken over (its heartbeat was late): it must stop at once."""


def _alive_here(host: str, pid: int) -> bool:
    """False only when the holder is on this host and its process is gone."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(row: LeaseRow, now: datetime) -> str:
    beat = (now - _aware(row.heartbeat_at)).total_seconds()
    return (f"held by {row.host} pid {row.pid} since {_aware(row.started_at):%Y-%m-%d %H:%M:%S} UTC "
            f"(last heartbeat {beat:.0f} s ago)")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


def acquire(store: Any, stale_after_s: float = STALE_S) -> dict[str, Any] | None:
    """Take the campaign's lease for this process. Returns the previous holder's record when a dead
    or silent holder was taken over (None when the lease was free); raises CampaignHeld otherwise."""
    host, pid = socket.gethostname(), os.getpid()
    holder = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
    now = utcnow()
    with Session(store.engine) as s, s.begin():
        row = s.get(LeaseRow, store.campaign_id)
        if row is None:
            try:
                with s.begin_nested():
                    s.execute(insert(LeaseRow).values(campaign_id=store.campaign_id, holder=holder, host=host,
                                                      pid=pid, started_at=now, heartbeat_at=now))
            except IntegrityError:
                raise CampaignHeld(f"campaign {store.campaign_id} is held by another conductor that started "
                                   "at this moment") from None
            store.lease_holder = holder
            return None
        silent = (now - _aware(row.heartbeat_at)).total_seconds() > stale_after_s
        if not silent and _alive_here(row.host, row.pid):
            raise CampaignHeld(f"campaign {store.campaign_id} is {_describe(row, now)}; "
                               f"it is taken over only after {stale_after_s:g} s without a heartbeat")
        previous = {"holder": row.holder, "host": row.host, "pid": row.pid,
                    "started_at": _aware(row.started_at).isoformat(),
                    "heartbeat_at": _aware(row.heartbeat_at).isoformat(),
                    "why": "no heartbeat for over {:g} s".format(stale_after_s) if silent else "its process is gone"}
        taken = s.execute(update(LeaseRow).where(LeaseRow.campaign_id == store.campaign_id,
                                                 LeaseRow.holder == row.holder)
                          .values(holder=holder, host=host, pid=pid, started_at=now, heartbeat_at=now))
        if taken.rowcount != 1:
            raise CampaignHeld(f"campaign {store.campaign_id} was just taken over by another conductor")
    store.lease_holder = holder
    return previous


def heartbeat(store: Any) -> None:
    """Renew this process's lease; LeaseLost if another conductor holds it now."""
    with Session(store.engine) as s, s.begin():
        renewed = s.execute(update(LeaseRow).where(LeaseRow.campaign_id == store.campaign_id,
                                                   LeaseRow.holder == store.lease_holder)
                            .values(heartbeat_at=utcnow()))
        if renewed.rowcount == 1:
            return
        row = s.get(LeaseRow, store.campaign_id)
        who = _describe(row, utcnow()) if row is not None else "released"
    raise LeaseLost(f"this conductor lost campaign {store.campaign_id}: it is now {who}; stopping")


def release(store: Any) -> None:
    if store.lease_holder is None:
        return
    with Session(store.engine) as s, s.begin():
        s.execute(delete(LeaseRow).where(LeaseRow.campaign_id == store.campaign_id,
                                         LeaseRow.holder == store.lease_holder))
    store.lease_holder = None


def holder(store: Any) -> dict[str, Any] | None:
    with Session(store.engine) as s:
        row = s.scalar(select(LeaseRow).where(LeaseRow.campaign_id == store.campaign_id))
        if row is None:
            return None
        return {"host": row.host, "pid": row.pid, "started_at": _aware(row.started_at).isoformat(),
                "heartbeat_at": _aware(row.heartbeat_at).isoformat()}


