"""The store: an append-only log of messages, and the tables derived from it.

The log is the truth. Every append writes the event and updates the derived tables (samples,
measurements, approvals, Bluesky documents) in one transaction, so a crash leaves either both or
neither; `rebuild()` recomputes the derived tables from the log alone. Operators' commands arrive
in an inbox table that the conductor consumes, so they work whether or not a campaign is running.
SQLite file by default; any SQLAlchemy URL (``postgresql://...``) otherwise.

Instruments write their Bluesky documents directly (`add_documents`, as the run emits them): raw data
beside the log, which the conductor reads on resume to tell a finished step from an interrupted one.
One conductor holds a campaign at a time (athanor/lease.py). A lost connection is retried with backoff
for `retry_s` seconds (the caller waits meanwhile); past that, `StoreUnavailable` says so in one line.
"""

from __future__ import annotations

import functools
import json
import time
from datetime import timezone
from typing import Any, Callable, Iterable, Sequence, TypeVar

from sqlalchemy import create_engine, event, func, inspect, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from athanor.documents import decode_nonfinite, encode_nonfinite
from athanor.errors import AthanorError
from athanor.messages import Message, StepIntent, parse_message, to_wire, utcnow
from athanor.lifecycle import apply, measurement_of, rows_of, sample_dict
from athanor.tables import (
    ApprovalRow,
    Base,
    CampaignRow,
    DocumentRow,
    EventRow,
    InboxRow,
    MeasurementRow,
    SampleRow,
)

DERIVED = (ApprovalRow, MeasurementRow, SampleRow)
EVENT_INSERT = EventRow.__table__.insert()  # Core, built once: the log's hot path
RETRY_S = 60.0  # how long a lost database connection is retried before the campaign stops


class StoreUnavailable(AthanorError):
    """The database could not be reached for longer than the store's `retry_s`."""


F = TypeVar("F", bound=Callable[..., Any])


def _transient(exc: DBAPIError) -> bool:
    """A lost or refused connection, or a locked SQLite file: worth waiting for. A missing table or
    column is not, and is raised at once."""
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return True
    text_ = str(exc.orig).lower()
    if "sqlite" in type(exc.orig).__module__:
        return "locked" in text_ or "unable to open" in text_ or "disk i/o" in text_
    return isinstance(exc, OperationalError)


def _retrying(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        deadline, delay, outer = None, 0.2, self.retrying
        try:
            while True:
                try:
                    return method(self, *args, **kwargs)
                except DBAPIError as exc:
                    if not _transient(exc):
                        raise
                    self.retrying = True  # the lost commit may have gone through: writes check first
                    now = time.monotonic()
                    deadline = deadline if deadline is not None else now + self.retry_s
                    text_ = str(exc.orig).strip()
                    reason = text_.splitlines()[0] if text_ else type(exc.orig).__name__
                    if now >= deadline:
                        raise StoreUnavailable(
                            f"the store at {self.safe_url} has been unreachable for {self.retry_s:g} s ({reason}); "
                            "the campaign stopped with everything measured kept: resume it with --resume") from None
                    if self.on_outage is not None:
                        self.on_outage(reason)
                    self.engine.dispose()  # connections to a restarted server are dead: make new ones
                    time.sleep(min(delay, deadline - now))
                    delay = min(2 * delay, 5.0)
        finally:
            self.retrying = outer
    return wrapper  # type: ignore[return-value]


def _add_missing_columns(engine: Engine) -> None:
    """Columns added to a table since a store was created (all nullable): a run folder written by an
    earlier version opens, resumes and rebuilds. `create_all` makes missing tables, not columns."""
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets `athanor approve` write the inbox while the conductor holds the log open.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _strict_json(value: Any) -> str:
    # NaN is not JSON: PostgreSQL refuses it, and SQLite would keep a file other readers choke on.
    return json.dumps(value, allow_nan=False)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":  # psycopg 3 is the driver we ship
        parsed = parsed.set(drivername="postgresql+psycopg")
    options: dict[str, Any] = {"future": True, "json_serializer": _strict_json}
    if parsed.get_backend_name() == "postgresql":  # a server can restart under us; a file cannot
        options.update(pool_pre_ping=True, connect_args={"connect_timeout": 5})
    engine = create_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Store:
    def __init__(self, url: str, campaign_id: str, retry_s: float = RETRY_S):
        self.url = url
        self.campaign_id = campaign_id
        self.retry_s = retry_s
        self.on_outage: Callable[[str], None] | None = None  # told each time a retry waits
        self.safe_url = make_url(url).render_as_string(hide_password=True)
        self.lease_holder: str | None = None
        self.retrying = False  # an append retried after a lost connection may find its commit went through
        try:
            self.engine = make_engine(url)
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        except Exception as exc:  # noqa: BLE001 -- any driver error becomes one clear line
            raise AthanorError(f"cannot open the store at {self.safe_url}: "
                               f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}") from None

    # --- campaign ---------------------------------------------------------------------------
    @_retrying
    def register_campaign(self, name: str, spec: dict[str, Any], replace: bool = False) -> None:
        """Record the campaign's spec; on resume, `replace` keeps the overrides given then."""
        with Session(self.engine) as s, s.begin():
            row = s.get(CampaignRow, self.campaign_id)
            if row is None:
                s.add(CampaignRow(id=self.campaign_id, name=name, spec=spec, created_at=utcnow()))
            elif replace:
                row.spec = spec

    @_retrying
    def campaign_spec(self) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            row = s.get(CampaignRow, self.campaign_id)
            return None if row is None else dict(row.spec)

    # --- the log ----------------------------------------------------------------------------
    def append(self, message: Message, documents: Iterable[tuple[str, dict[str, Any]]] = ()) -> list[dict[str, Any]]:
        """Log a message, update the derived tables, and keep any Bluesky documents, atomically.
        Returns the samples the message changed, as `samples()` shows them (the conductor's memory)."""
        return self.append_all([message], documents)

    @_retrying
    def append_all(self, messages: Sequence[Message],
                   documents: Iterable[tuple[str, dict[str, Any]]] = ()) -> list[dict[str, Any]]:
        """Log several messages in order in one transaction (all or none); the samples they changed."""
        for message in messages:
            if message.campaign_id != self.campaign_id:
                raise ValueError(f"message for campaign {message.campaign_id} sent to {self.campaign_id}")
        touched: dict[str, Any] = {}
        with Session(self.engine) as s, s.begin():
            for message in messages:
                if self.retrying and s.scalar(select(EventRow.seq).where(EventRow.id == message.id)) is not None:
                    rows = rows_of(s, message)  # a commit that went through before the connection was lost
                else:
                    s.execute(EVENT_INSERT, {
                        "id": message.id, "campaign_id": message.campaign_id, "kind": message.kind,
                        "sample_id": message.sample_id, "causation_id": message.causation_id, "sender": message.sender,
                        "created_at": message.created_at.astimezone(timezone.utc), "body": to_wire(message)})
                    rows = apply(s, message)
                    _add_documents(s, self.campaign_id, list(documents), message.sample_id, event_id=message.id)
                    documents = ()
                touched.update((row.id, row) for row in rows)
            s.flush()
            return [sample_dict(row, measurement_of(s, row)) for row in touched.values()]

    @_retrying
    def add_documents(self, documents: list[tuple[str, dict[str, Any]]], sample_id: str | None,
                      key: str | None = None, step: str | None = None, run_uid: str | None = None) -> None:
        """Keep an instrument's documents as its run emits them (not a log message: raw data)."""
        with Session(self.engine) as s, s.begin():
            if self.retrying and key is not None:  # a commit that went through before the connection was lost
                stored = {(r.name, (r.body or {}).get("uid")) for r in s.scalars(select(DocumentRow).where(
                    DocumentRow.campaign_id == self.campaign_id, DocumentRow.idempotency_key == key))}
                documents = [(n, d) for n, d in documents if (n, d.get("uid")) not in stored]
            _add_documents(s, self.campaign_id, documents, sample_id, key=key, step=step, run_uid=run_uid)

    @_retrying
    def step_documents(self, key: str) -> list[tuple[str, dict[str, Any]]]:
        """Every stored document of the runs a step's idempotency key started, in emission order."""
        with Session(self.engine) as s:
            rows = s.scalars(select(DocumentRow).where(DocumentRow.campaign_id == self.campaign_id,
                                                       DocumentRow.idempotency_key == key).order_by(DocumentRow.id))
            return [(r.name, decode_nonfinite(r.body, r.nonfinite)) for r in rows]

    @_retrying
    def events(self, sample_id: str | None = None, kind: str | None = None) -> list[Message]:
        query = select(EventRow.body).where(EventRow.campaign_id == self.campaign_id)
        if sample_id is not None:
            query = query.where(EventRow.sample_id == sample_id)
        if kind is not None:
            query = query.where(EventRow.kind == kind)
        with Session(self.engine) as s:
            return [parse_message(body) for body in s.scalars(query.order_by(EventRow.seq))]

    @_retrying
    def count_events(self, kind: str | None = None) -> int:
        with Session(self.engine) as s:
            query = select(func.count()).select_from(EventRow).where(EventRow.campaign_id == self.campaign_id)
            if kind is not None:
                query = query.where(EventRow.kind == kind)
            return s.scalar(query) or 0

    @_retrying
    def wall_time_s(self) -> float:
        """Time the campaign has run, summed over its sessions (each from its start to its last event)."""
        query = (select(EventRow.created_at, EventRow.kind, EventRow.body["event"].as_string())
                 .where(EventRow.campaign_id == self.campaign_id).order_by(EventRow.seq))
        total, start, last = 0.0, None, None
        with Session(self.engine) as s:
            for created, kind, what in s.execute(query):
                if kind == "campaign_event" and what in ("started", "resumed"):
                    if start is not None:
                        total += (last - start).total_seconds()
                    start = created
                last = created
        return total + ((last - start).total_seconds() if start is not None else 0.0)

    @_retrying
    def rebuild(self) -> None:
        """Recompute the derived tables from the log alone: what resume trusts.

        Bluesky documents are raw data kept beside the event that carried them, not derived.
        """
        with Session(self.engine) as s, s.begin():
            for table in DERIVED:
                s.query(table).filter(table.campaign_id == self.campaign_id).delete()
            s.flush()
            events = s.scalars(
                select(EventRow.body).where(EventRow.campaign_id == self.campaign_id).order_by(EventRow.seq)
            )
            for body in events:
                apply(s, parse_message(body))
                s.flush()

    # --- derived views ----------------------------------------------------------------------
    @_retrying
    def samples(self, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        query = select(SampleRow).where(SampleRow.campaign_id == self.campaign_id)
        if states is not None:
            query = query.where(SampleRow.state.in_(list(states)))
        with Session(self.engine) as s:
            rows = s.scalars(query.order_by(SampleRow.seq)).all()
            values = {
                m.sample_id: m
                for m in s.scalars(select(MeasurementRow).where(MeasurementRow.campaign_id == self.campaign_id))
            }
            return [sample_dict(r, values.get(r.id)) for r in rows]

    @_retrying
    def sample(self, sample_id: str) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            row = s.scalar(select(SampleRow).where(SampleRow.campaign_id == self.campaign_id, SampleRow.id == sample_id))
            if row is None:
                return None
            measurement = s.scalar(select(MeasurementRow).where(
                MeasurementRow.campaign_id == self.campaign_id, MeasurementRow.sample_id == sample_id))
            return sample_dict(row, measurement)

    @_retrying
    def approvals(self) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            rows = s.scalars(
                select(ApprovalRow).where(ApprovalRow.campaign_id == self.campaign_id).order_by(ApprovalRow.id)
            )
            return [
                {"sample_id": r.sample_id, "approved": r.approved, "decided_by": r.decided_by,
                 "channel": r.channel, "reason": r.reason, "edited_inputs": r.edited_inputs,
                 "transcript": r.transcript or {}, "login": r.login, "authenticated": bool(r.authenticated),
                 "decided_at": r.decided_at.isoformat()}
                for r in rows
            ]

    def waiting_reasons(self) -> dict[str, str]:
        """Why each proposal was put to an operator (the latest request per sample)."""
        return {e.sample_id: e.reason for e in self.events(kind="approval_request")}

    def refused_commands(self) -> list[str]:
        """Operators' commands the conductor refused, and why, oldest first."""
        return [f.error for f in self.events(kind="fault") if f.step == "operator"]

    def controls(self) -> dict[str, Any]:
        """What operators set while the campaign runs: paused or not, and the batch size (None: the spec's)."""
        paused, batch_size = False, None
        for e in self.events(kind="campaign_event"):
            if e.event in ("paused", "unpaused"):
                paused = e.event == "paused"
            elif e.event == "batch_size_set":
                batch_size = int(e.detail["batch_size"])
        return {"paused": paused, "batch_size": batch_size}

    @_retrying
    def documents(self, sample_id: str) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            query = select(DocumentRow).where(DocumentRow.campaign_id == self.campaign_id, DocumentRow.sample_id == sample_id)
            rows = s.scalars(query.order_by(DocumentRow.id))
            return [{"name": r.name, "run_uid": r.run_uid, "step": r.step, "idempotency_key": r.idempotency_key,
                     "doc": decode_nonfinite(r.body, r.nonfinite)} for r in rows]

    @_retrying
    def last_intents(self, sample_ids: Iterable[str]) -> dict[tuple[str, str], StepIntent]:
        """The latest intent of each step of these samples (what resume reconciles)."""
        ids, found = list(sample_ids), {}
        with Session(self.engine) as s:
            for i in range(0, len(ids), 500):
                query = select(EventRow.body).where(EventRow.campaign_id == self.campaign_id, EventRow.kind == "step_intent",
                                                    EventRow.sample_id.in_(ids[i:i + 500])).order_by(EventRow.seq)
                for body in s.scalars(query):
                    intent = parse_message(body)
                    found[(intent.sample_id, intent.step)] = intent
        return found

    # --- the conductor's lease (athanor/lease.py) ---------------------------------------------
    @_retrying
    def acquire_lease(self) -> dict[str, Any] | None:
        from athanor.lease import acquire

        return acquire(self)

    @_retrying
    def heartbeat(self) -> None:
        from athanor.lease import heartbeat

        heartbeat(self)

    def release_lease(self) -> None:
        from athanor.lease import release

        try:
            release(self)
        except DBAPIError:  # a store that is down keeps the lease until it goes stale
            pass

    # --- inbox ------------------------------------------------------------------------------
    @_retrying
    def post_command(self, command: dict[str, Any]) -> int:
        with Session(self.engine) as s, s.begin():
            row = InboxRow(campaign_id=self.campaign_id, command=command, created_at=utcnow())
            s.add(row)
            s.flush()
            return row.id

    @_retrying
    def claim(self, command_id: int) -> bool:
        """The conductor takes a command up (False: an operator withdrew it first). A claimed command
        not yet consumed is delivered again after a crash."""
        with Session(self.engine) as s, s.begin():
            taken = s.execute(update(InboxRow).where(InboxRow.id == command_id, InboxRow.withdrawn_at.is_(None))
                              .values(claimed_at=utcnow()))
            return taken.rowcount == 1

    @_retrying
    def withdraw(self, command_id: int, by: str) -> bool:
        """Take back a command the conductor has not taken up (False: it has, or there is no such one)."""
        with Session(self.engine) as s, s.begin():
            now = utcnow()
            taken = s.execute(update(InboxRow).where(
                InboxRow.id == command_id, InboxRow.campaign_id == self.campaign_id, InboxRow.claimed_at.is_(None),
                InboxRow.consumed_at.is_(None)).values(withdrawn_at=now, withdrawn_by=by, consumed_at=now))
            return taken.rowcount == 1

    def take_commands(self) -> list[dict[str, Any]]:
        with Session(self.engine) as s, s.begin():
            rows = s.scalars(self._unconsumed).all()
            now = utcnow()
            for row in rows:
                row.consumed_at = now
            return [dict(r.command) for r in rows]

    @property
    def _unconsumed(self) -> Any:
        return (select(InboxRow).where(InboxRow.campaign_id == self.campaign_id, InboxRow.consumed_at.is_(None))
                .order_by(InboxRow.id))

    @_retrying
    def pending_commands(self) -> list[tuple[int, Any]]:
        """Unconsumed commands with their ids, left in the inbox until `consume`."""
        with Session(self.engine) as s:
            rows = s.scalars(self._unconsumed).all()
            return [(r.id, r.command) for r in rows]  # as stored: the conductor refuses what is not a command

    @_retrying
    def queued_commands(self) -> list[dict[str, Any]]:
        """What operators posted and the conductor has not carried out yet, as `athanor status` lists it."""
        with Session(self.engine) as s:
            rows = s.scalars(self._unconsumed).all()
            return [{"command_id": r.id, "posted_at": r.created_at.isoformat(), "claimed": r.claimed_at is not None,
                     **({k: v for k, v in r.command.items() if k != "transcript"} if isinstance(r.command, dict)
                        else {"malformed": str(r.command)[:300]})} for r in rows]

    @_retrying
    def consume(self, command_id: int) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(InboxRow, command_id)
            if row is not None:
                row.consumed_at = utcnow()

    def close(self) -> None:
        self.engine.dispose()


def _add_documents(s: Session, campaign_id: str, documents: list[tuple[str, dict[str, Any]]],
                   sample_id: str | None, event_id: str = "", key: str | None = None, step: str | None = None,
                   run_uid: str | None = None) -> None:
    run_of_descriptor: dict[str, str] = {}
    for name, doc in documents:
        if name == "descriptor":
            run_of_descriptor[doc["uid"]] = doc["run_start"]
        run = (doc.get("run_start") or run_of_descriptor.get(doc.get("descriptor", "")) or run_uid
               or doc.get("uid", ""))
        body, nonfinite = encode_nonfinite(doc)
        s.add(DocumentRow(campaign_id=campaign_id, sample_id=sample_id or "", event_id=event_id, run_uid=run,
                          name=name, body=body, nonfinite=nonfinite or None,
                          idempotency_key=key or (doc.get("idempotency_key") if name == "start" else None),
                          step=step or (doc.get("step") if name == "start" else None)))
