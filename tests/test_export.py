"""`athanor export DIR --documents OUT`: every run's documents, read back with the Bluesky ecosystem's own
reader (databroker's JSONL catalog) and replayed through event_model."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import event_model
import numpy as np
import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from athanor.campaign import RUN_FILE
from athanor.errors import AthanorError
from athanor.export import add_parser, export_documents
from athanor.tables import DocumentRow
from athanor.testing import campaign_file, run_in_process
from athanor.testing.invariants import CampaignLog
from conftest import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:The return type of `Dataset.dims`:FutureWarning")  # databroker's
import databroker._drivers.jsonl as jsonl  # noqa: E402 -- databroker 1.x, the test extra: it reads suitcase-jsonl files


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The solid-state demo (XRD patterns in its events), two experiments, run to its end in process."""
    tmp = tmp_path_factory.mktemp("export")
    config = campaign_file(tmp / "c.yaml", ROOT / "configs" / "solid_state_demo.yaml", budget={"experiments": 2})
    run = run_in_process(config, tmp / "run")
    assert run.status == "completed"
    return run


def export_command(run_dir: Path, out: Path) -> int:
    """The subcommand as the command line runs it: parsed from its own `add_parser`."""
    parser = argparse.ArgumentParser(prog="athanor")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", str(run_dir), "--documents", str(out)])
    return args.func(args)


def stored(store) -> list[dict]:
    return CampaignLog.read(store).documents


def validate(name: str, doc: dict) -> None:
    event_model.schema_validators[event_model.DocumentNames[name]].validate(doc)


class Replay(event_model.DocumentRouter):
    """A run replayed as a live consumer sees it: every document valid, in an order that makes sense."""

    def __init__(self):
        super().__init__()
        self.start_doc, self.stop_doc, self.descriptors, self.events = None, None, {}, Counter()

    def __call__(self, name, doc, validate_doc=True):
        validate(name, doc)
        return super().__call__(name, doc)

    def start(self, doc):
        assert self.start_doc is None
        self.start_doc = doc

    def descriptor(self, doc):
        assert doc["run_start"] == self.start_doc["uid"] and self.stop_doc is None
        self.descriptors[doc["uid"]] = doc

    def event_page(self, doc):
        assert self.stop_doc is None
        self.events[self.descriptors[doc["descriptor"]]["name"]] += len(doc["seq_num"])

    def stop(self, doc):
        assert doc["run_start"] == self.start_doc["uid"] and self.stop_doc is None
        assert dict(self.events) == doc["num_events"]
        self.stop_doc = doc


def replay(documents) -> dict[str, Replay]:
    """Every run's documents through event_model's RunRouter, one validating replay per run."""
    replays: dict[str, Replay] = {}

    def factory(name, start_doc):
        replays[start_doc["uid"]] = Replay()
        return [replays[start_doc["uid"]]], []

    router = event_model.RunRouter([factory])
    for name, doc in documents:
        router(name, doc)
    return replays


def test_every_run_reads_back_with_databroker_valid_and_as_emitted(finished, tmp_path, capsys):
    out = tmp_path / "documents"
    assert export_command(finished.out, out) == 0
    said = capsys.readouterr().out
    assert "exported 4 runs (20 documents)" in said and "without a stop document" not in said

    docs = stored(finished.store)
    starts = [d["doc"] for d in docs if d["name"] == "start"]
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == len(starts) == 4  # two runs (synthesize, characterize) per experiment
    assert [f.name for f in files] == [f"{i:04d}-{s['sample_id']}-{s['step']}-{s['uid']}.jsonl"
                                       for i, s in enumerate(starts, 1)]  # in the order the runs started

    # the files hold exactly the documents the instruments emitted, run by run (the reader's own line parser)
    written = {f.name: list(jsonl.gen(str(f))) for f in files}
    for f, start in zip(files, starts):
        assert [[n, d] for n, d in written[f.name]] == [[d["name"], d["doc"]] for d in docs
                                                        if d["run_uid"] == start["uid"]]
    for name, doc in (pair for pairs in written.values() for pair in pairs):
        validate(name, doc)
    in_order = [pair for f in files for pair in written[f.name]]
    assert all(r.stop_doc["exit_status"] == "success" for r in replay(in_order).values())

    catalog = jsonl.BlueskyJSONLCatalog(str(out / "*.jsonl"))
    assert sorted(catalog) == sorted(s["uid"] for s in starts)
    replays = {}
    for uid in catalog:
        run = catalog[uid]
        assert run.metadata["start"] == next(s for s in starts if s["uid"] == uid)
        assert run.metadata["stop"]["exit_status"] == "success"
        replays.update(replay(run.documents(fill="no")))  # databroker's canonical stream, through RunRouter
    assert set(replays) == set(catalog) and all(r.stop_doc for r in replays.values())

    # XRD patterns: the arrays the diffractometer emitted, back through databroker's reader as arrays
    patterns = 0
    for start in starts:
        if start["step"] != "characterize":
            continue
        fields = start["pattern_fields"]
        event = next(d["doc"] for d in docs if d["name"] == "event" and d["run_uid"] == start["uid"])
        data = catalog[start["uid"]].primary.read()
        for field in (fields["two_theta"], fields["intensity"]):
            emitted = np.asarray(event["data"][field])
            assert emitted.shape == (3501,)
            np.testing.assert_array_equal(data[field].values, emitted[np.newaxis, :])
            patterns += 1
    assert patterns == 4


@pytest.fixture
def copied(finished, tmp_path) -> Path:
    """The finished run folder copied, its store with it, to change without touching the original."""
    folder = tmp_path / "run"
    shutil.copytree(finished.out, folder)
    info = json.loads((folder / RUN_FILE).read_text())
    info["store_url"] = f"sqlite:///{folder / 'campaign.db'}"
    (folder / RUN_FILE).write_text(json.dumps(info))
    return folder


def test_one_documents_file_holds_every_run_in_order_as_the_per_run_files_do(finished, tmp_path, capsys):
    one, folder = tmp_path / "documents.jsonl", tmp_path / "per-run"
    assert export_command(finished.out, one) == 0
    assert "to " + str(one) + ": one JSONL stream, run after run" in capsys.readouterr().out
    assert one.is_file()
    stream = [json.loads(line) for line in one.read_text().splitlines()]
    assert export_command(finished.out, folder) == 0
    per_run = [pair for f in sorted(folder.glob("*.jsonl")) for pair in jsonl.gen(str(f))]
    assert [list(p) for p in per_run] == stream  # the same documents, concatenated run after run
    replays = replay(stream)  # one stream of several runs: event_model's RunRouter separates them
    assert len(replays) == 4 and all(r.stop_doc["exit_status"] == "success" for r in replays.values())
    with pytest.raises(AthanorError, match="already exists; name a new file"):
        export_documents(finished.out, one)


def test_runs_whose_documents_interleave_in_the_store_are_written_whole(copied, tmp_path):
    """On Ray a synthesis and a measurement run at once: their documents reach the store interleaved."""
    from athanor.campaign import open_run

    store, _ = open_run(copied)
    with Session(store.engine) as s, s.begin():
        rows = s.scalars(select(DocumentRow).order_by(DocumentRow.id)).all()
        first, second = [r.run_uid for r in rows if r.name == "start"][:2]
        a, b = [r for r in rows if r.run_uid == first], [r for r in rows if r.run_uid == second]
        mixed = [r for pair in itertools.zip_longest(a, b) for r in pair if r is not None]
        copies = [{c.name: getattr(r, c.name) for c in DocumentRow.__table__.columns if c.name != "id"} for r in mixed]
        s.execute(delete(DocumentRow).where(DocumentRow.run_uid.in_([first, second])))
        s.flush()
        s.add_all(DocumentRow(**c) for c in copies)  # new ids, a's and b's documents alternating
    store.close()
    one = tmp_path / "all.jsonl"
    assert export_command(copied, one) == 0
    runs = [d["uid"] if n == "start" else d.get("run_start") for n, d in (json.loads(x) for x in one.read_text().splitlines())]
    starts = [r for r, n in zip(runs, (json.loads(x)[0] for x in one.read_text().splitlines())) if n == "start"]
    blocks = [uid for uid, _ in itertools.groupby(r for r in runs if r is not None)]
    assert blocks == starts and len(set(blocks)) == len(blocks)  # every run whole, once, in start order
    assert len(replay(json.loads(x) for x in one.read_text().splitlines())) == 4


def test_an_interrupted_run_is_exported_as_stored_without_a_stop_and_the_command_says_so(copied, tmp_path, capsys):
    from athanor.campaign import open_run

    store, _ = open_run(copied)
    starts = [d["doc"] for d in stored(store) if d["name"] == "start"]
    cut = next(s for s in starts if s["sample_id"] == "S0001" and s["step"] == "characterize")
    with Session(store.engine) as s, s.begin():  # the run lost its stop (a crash mid-run)
        assert s.execute(delete(DocumentRow).where(DocumentRow.campaign_id == store.campaign_id,
                                                   DocumentRow.name == "stop",
                                                   DocumentRow.run_uid == cut["uid"])).rowcount == 1
        # and an emitted NaN, kept aside by the store as JSON has none, comes back as NaN
        row = s.scalars(select(DocumentRow).where(DocumentRow.name == "event",
                                                  DocumentRow.run_uid == starts[0]["uid"])).first()
        field = next(k for k, v in row.body["data"].items() if isinstance(v, float))
        body = json.loads(json.dumps(row.body))
        body["data"][field] = None
        s.execute(update(DocumentRow).where(DocumentRow.id == row.id)
                  .values(body=body, nonfinite={f"/data/{field}": "NaN"}))
    store.close()

    out = tmp_path / "documents"
    assert export_command(copied, out) == 0
    said = capsys.readouterr().out
    assert "exported 4 runs (19 documents)" in said
    assert (f"never finished: run {cut['uid'][:8]} (S0001 characterize)" in said
            and "exported as stored, without a stop document" in said)
    assert said.count("never finished") == 1

    catalog = jsonl.BlueskyJSONLCatalog(str(out / "*.jsonl"))
    assert len(catalog) == len(starts)
    assert catalog[cut["uid"]].metadata["stop"] is None  # nothing invented
    written = list(jsonl.gen(str(next(out.glob(f"*-{cut['uid']}.jsonl")))))
    assert [n for n, _ in written] == ["start", "descriptor", "event"]
    replays = replay(pair for f in sorted(out.glob("*.jsonl")) for pair in jsonl.gen(str(f)))
    assert replays[cut["uid"]].stop_doc is None and replays[cut["uid"]].events == {"primary": 1}
    assert sum(r.stop_doc is not None for r in replays.values()) == 3
    xrd = catalog[cut["uid"]].primary.read()  # its data still reads, up to where the run stopped
    assert xrd[cut["pattern_fields"]["two_theta"]].shape == (1, 3501)

    first = next(out.glob(f"*-{starts[0]['uid']}.jsonl"))
    nan = next(d for n, d in jsonl.gen(str(first)) if n == "event" and isinstance(d["data"][field], float)
               and math.isnan(d["data"][field]))
    validate("event", nan)


def test_bad_inputs_are_one_clear_line_and_nothing_is_written(finished, tmp_path):
    def refused(run_dir, out, match):
        with pytest.raises(AthanorError, match=match) as caught:
            export_documents(run_dir, out)
        assert "\n" not in str(caught.value)
        return caught.value

    refused(tmp_path / "nowhere", tmp_path / "a", r"nowhere: no campaign here \(no run.json\)")
    assert not (tmp_path / "a").exists()

    taken = tmp_path / "taken.jsonl"
    taken.write_text("keep me\n")
    refused(finished.out, taken, r"taken.jsonl already exists; name a new file \(export never overwrites\)")
    assert taken.read_text() == "keep me\n"

    full = tmp_path / "full"
    full.mkdir()
    (full / "x.jsonl").write_text("keep me too\n")
    refused(finished.out, full, r"full already exists and is not empty; name a new folder")
    assert [p.name for p in full.iterdir()] == ["x.jsonl"]

    refused(finished.out, taken / "out", r"taken.jsonl/out: cannot write there \(\S+/taken.jsonl is a file, not a folder\)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "taken.jsonl"]  # no partial export left behind

    empty = tmp_path / "empty"  # a folder made for the export is fine
    empty.mkdir()
    assert len(export_documents(finished.out, empty).runs) == 4 and len(list(empty.glob("*.jsonl"))) == 4
