"""`athanor export DIR --documents OUT`: every run's Bluesky documents, in the files the Bluesky ecosystem reads.

Written by suitcase-jsonl's own `Serializer`: newline-delimited JSON, one `[name, document]` pair a line,
each run's documents in the order it emitted them (start, descriptor, event, ..., stop), exactly as the
instruments emitted them into the store (arrays such as an XRD pattern's two_theta and counts as JSON
lists; NaN and infinities restored and written as Python's json writes them, `NaN`/`Infinity`). Two layouts:

- OUT ending in `.jsonl`: the documents file, every run of the campaign whole, one after the other, in
  the order they started (a stream any event_model consumer replays: `event_model.RunRouter` routes it);
- any other OUT: a new folder with one file per run, `NNNN-<sample>-<step>-<start uid>.jsonl` (NNNN counts
  the runs in the order they started), the layout databroker's JSONL catalog reads, one run a file.

Read a folder back with databroker 1.x (`pip install 'databroker>=1.2.5,<2'`; databroker 2 reads no files):

    from databroker._drivers.jsonl import BlueskyJSONLCatalog
    catalog = BlueskyJSONLCatalog("OUT/*.jsonl")          # one entry per run, keyed by its start uid
    run = catalog[-1]; run.metadata["start"], run.primary.read(), list(run.documents(fill="no"))

(or, with nothing but Python: `[json.loads(line) for line in open(path)]` gives the (name, document) pairs).

A run that never finished (interrupted by a crash, or still under way when exported) is written as stored:
its documents up to where it stopped, with no stop document (JSONL needs none, and databroker reads such
a run with `metadata["stop"] is None`); the command names each one. Nothing is invented.
Documents whose run has no start document in the store (there should be none) are left out and counted.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from athanor.errors import AthanorError

if TYPE_CHECKING:  # the command line builds its parser from here: nothing heavy at import
    from athanor.store import Store

READ_BACK = 'databroker._drivers.jsonl.BlueskyJSONLCatalog("{out}/*.jsonl") (databroker 1.x)'
ONE_FILE = ".jsonl"  # an OUT ending so is one file for the whole campaign
LISTED = 20  # interrupted runs named one by one; past that, counted


@dataclass
class ExportedRun:
    uid: str
    sample_id: str
    step: str
    path: Path
    started: float
    documents: int = 0
    exit_status: str | None = None  # the stop document's; None: the run has no stop document

    @property
    def finished(self) -> bool:
        return self.exit_status is not None


@dataclass
class DocumentsExport:
    campaign: str
    campaign_id: str
    out: Path
    runs: list[ExportedRun] = field(default_factory=list)
    one_file: bool = False  # OUT is one .jsonl file for all runs, not a folder of one file per run
    left_out: int = 0  # documents of no exported run (no start document in the store, or after its stop)
    duplicates: int = 0  # a document stored twice (same name and uid in one run), written once

    @property
    def documents(self) -> int:
        return sum(r.documents for r in self.runs)

    @property
    def interrupted(self) -> list[ExportedRun]:
        return [r for r in self.runs if not r.finished]


def export_documents(run_dir: str | Path, out: str | Path) -> DocumentsExport:
    """Write every run's documents of the campaign in `run_dir` to the new folder `out` (see the module's
    docstring). All or nothing: the files are written beside `out` and moved into place at the end."""
    from athanor.campaign import open_run

    out = Path(out)
    one_file = out.name.endswith(ONE_FILE)
    store, spec = open_run(run_dir)
    try:
        _check_out(out, one_file)
        serializer = _serializer_class()
        target = out.absolute()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            staging.mkdir()  # as any folder the user makes (mkdtemp's would be private to them)
        except OSError as exc:
            raise AthanorError(f"{out}: cannot write there ({_why_not(target.parent, exc)})") from None
        joined = staging.with_name(staging.name + ".jsonl")
        try:
            report = DocumentsExport(spec.campaign, store.campaign_id, out, one_file=one_file)
            _write(store, staging, serializer, report)
            if one_file:  # each run whole, in the order the runs started (their documents may interleave in the store)
                with joined.open("x") as sink:
                    for run in sorted(staging.glob("*.jsonl")):
                        sink.write(run.read_text())
                shutil.rmtree(staging)
            for run in report.runs:
                run.path = out if one_file else out / run.path.name
            _move_into_place(joined if one_file else staging, target, out)
        except BaseException:
            joined.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return report
    finally:
        store.close()


def _check_out(out: Path, one_file: bool) -> None:
    if one_file:
        if out.exists() or out.is_symlink():
            raise AthanorError(f"{out} already exists; name a new file (export never overwrites)")
        return
    if out.is_dir():
        if any(out.iterdir()):
            raise AthanorError(f"{out} already exists and is not empty; name a new folder (export never overwrites)")
    elif out.exists() or out.is_symlink():
        raise AthanorError(f"{out} already exists (not a folder); name a new folder (export never overwrites)")


def _why_not(folder: Path, exc: OSError) -> str:
    """Why a folder could not be made or written in: a file in the way, or what the system said."""
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            return (exc.strerror or str(exc)) if path.is_dir() else f"{path} is a file, not a folder"
    return exc.strerror or str(exc)


def _serializer_class() -> Any:
    try:
        from suitcase.jsonl import Serializer
    except ImportError:
        raise AthanorError("export --documents writes with suitcase-jsonl, which is not installed: "
                           "pip install suitcase-jsonl") from None
    return Serializer


def _move_into_place(staging: Path, target: Path, out: Path) -> None:
    if staging.is_file() and target.exists():  # rename(2) would replace a file that appeared meanwhile
        raise AthanorError(f"{out} appeared while exporting; nothing was written")
    try:
        # rename(2) replaces an empty folder (one the user made for the export) and refuses anything else
        os.rename(staging, target)
    except OSError as exc:
        raise AthanorError(f"{out}: cannot put the export there ({exc.strerror or exc}); nothing was written") from None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:60]


def _run_of(name: str, doc: dict[str, Any], parents: dict[str, str]) -> str | None:
    """The start uid of the run a document belongs to, from the document itself (descriptors and
    resources remembered in `parents` as they pass)."""
    if name == "start":
        return doc.get("uid")
    if name in ("descriptor", "resource", "stream_resource"):
        run = doc.get("run_start")
        if run and doc.get("uid"):
            parents[doc["uid"]] = run
        return run
    if name == "stop":
        return doc.get("run_start")
    parent = doc.get({"event": "descriptor", "event_page": "descriptor", "datum": "resource",
                      "datum_page": "resource", "stream_datum": "stream_resource"}.get(name, ""))
    return parents.get(parent) if isinstance(parent, str) else None


def _write(store: Store, folder: Path, serializer_class: Any, report: DocumentsExport) -> None:
    """Stream the campaign's documents, in the order they were stored, each to its run's serializer."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    from athanor.documents import decode_nonfinite
    from athanor.tables import DocumentRow

    where = DocumentRow.campaign_id == store.campaign_id
    writers: dict[str, Any] = {}  # start uid -> its open serializer (closed at its stop, or at the end)
    runs: dict[str, ExportedRun] = {}
    seen: dict[str, set[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    try:
        with Session(store.engine) as s:
            starts = s.scalar(select(func.count()).select_from(DocumentRow).where(where, DocumentRow.name == "start"))
            width = max(4, len(str(starts or 0)))
            rows = s.scalars(select(DocumentRow).where(where).order_by(DocumentRow.id)
                             .execution_options(yield_per=200))
            for row in rows:
                name, doc = row.name, decode_nonfinite(row.body, row.nonfinite)
                uid = _run_of(name, doc, parents) or row.run_uid
                if name == "start" and uid not in runs:
                    sample, step = row.sample_id or str(doc.get("sample_id") or ""), row.step or str(doc.get("step") or "")
                    label = "-".join(_slug(p) for p in (f"{len(runs) + 1:0{width}d}", sample, step) if _slug(p))
                    # suitcase formats the prefix with the start document: its own `{start[uid]}` names the file
                    writers[uid] = serializer_class(folder, file_prefix=label + "-{start[uid]}")
                    runs[uid] = ExportedRun(uid, sample, step, folder / f"{label}-{uid}.jsonl", float(doc.get("time", 0)))
                    seen[uid] = set()
                if uid not in writers:  # no start document for it, or it comes after its run's stop
                    report.left_out += 1
                    continue
                if "uid" in doc and (name, str(doc["uid"])) in seen[uid]:
                    report.duplicates += 1
                    continue
                seen[uid].add((name, str(doc.get("uid"))))
                writers[uid](name, doc)
                runs[uid].documents += 1
                if name == "stop":
                    runs[uid].exit_status = str(doc.get("exit_status") or "unknown")
                    writers.pop(uid).close()
                    seen.pop(uid)
    except SQLAlchemyError as exc:
        raise AthanorError(f"cannot read the documents from the store at {store.safe_url}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise AthanorError(f"{report.out}: cannot write the export ({exc.strerror or exc}); nothing was written") from None
    finally:
        for writer in writers.values():  # runs with no stop document: their files end where their runs did
            writer.close()
    report.runs = list(runs.values())


def format_export(report: DocumentsExport) -> str:
    from datetime import datetime, timezone

    runs, out = report.runs, report.out
    where = (f"{out}: one JSONL stream, run after run" if report.one_file else
             f"{out}/: one suitcase-jsonl file per run")
    lines = [f"exported {len(runs)} run{'' if len(runs) == 1 else 's'} ({report.documents} documents) of campaign "
             f"{report.campaign} ({report.campaign_id}) to {where}, in the order they started"]
    if not runs:
        lines[0] = f"campaign {report.campaign} ({report.campaign_id}) has no Bluesky runs yet: {out} is empty"
    ended = [r for r in runs if r.finished and r.exit_status != "success"]
    if ended:
        lines.append(f"{len(ended)} run(s) ended other than success ({', '.join(sorted({r.exit_status for r in ended}))}); "
                     "their stop documents say why")
    for run in report.interrupted[:LISTED]:
        started = datetime.fromtimestamp(run.started, tz=timezone.utc)
        what = " ".join(p for p in (run.sample_id, run.step) if p)
        lines.append(f"never finished: run {run.uid[:8]}{f' ({what})' if what else ''} started {started:%Y-%m-%d %H:%M:%S} "
                     "UTC (interrupted, or still under way): exported as stored, without a stop document")
    if len(report.interrupted) > LISTED:
        lines.append(f"... and {len(report.interrupted) - LISTED} more runs that never finished, exported without a "
                     "stop document")
    if report.duplicates:
        lines.append(f"{report.duplicates} document(s) stored twice were written once")
    if report.left_out:
        lines.append(f"{report.left_out} document(s) left out: their run has no start document in the store, "
                     "or they came after its stop")
    if runs and not report.one_file:
        lines.append("read back with " + READ_BACK.format(out=out))
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    print(format_export(export_documents(args.dir, args.documents)))
    return 0


def add_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="write a campaign's Bluesky documents in the files the Bluesky ecosystem reads",
        description=__doc__.split("\n\n")[0])
    export.add_argument("dir", metavar="DIR", help="run folder of the campaign")
    export.add_argument("--documents", required=True, metavar="OUT",
                        help="where every run's event-model documents go, as suitcase-jsonl writes them: OUT.jsonl, "
                             "one new file with every run in campaign order; any other name, a new (or empty) "
                             "folder of one file per run, as databroker reads them")
    export.set_defaults(func=run_command)
