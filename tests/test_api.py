"""The Python API (athanor.load, run, open_run, Run) and the quickstart notebook in examples/."""

from __future__ import annotations

import _thread
import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

import athanor
from athanor.errors import AthanorError, SpecError
from conftest import P3HT_INPUTS, P3HT_OBJECTIVE, ROOT, write_campaign

NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 6-experiment replay campaign run to its end in process, some samples failing."""
    tmp = tmp_path_factory.mktemp("api")
    config = write_campaign(tmp / "c.yaml", name="api_campaign", budget=6, batch_size=2, failure_rate=0.25, seed=3)
    run = athanor.run(config, tmp / "run", in_process=True, progress=False)
    yield run
    run.close()


def db_count(run: athanor.Run, sql: str) -> int:
    """A count straight from the run's SQLite file, not through the store's code."""
    with sqlite3.connect(run.out / "campaign.db") as db:
        return db.execute(sql, (run.campaign_id,)).fetchone()[0]


def test_import_athanor_stays_light_and_reaches_the_api_on_first_use():
    code = ("import sys, athanor; heavy = ('pandas', 'ray', 'torch', 'matplotlib', 'sqlalchemy');"
            "print(sorted(m for m in heavy if m in sys.modules)); athanor.Run; athanor.load;"
            "print('pandas' in sys.modules, callable(athanor.run), callable(athanor.open_run))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "False True True"  # athanor.api itself imports nothing heavy either
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        athanor.nope  # noqa: B018


def test_load_returns_the_validated_campaign():
    spec = athanor.load(ROOT / "configs" / "p3ht_replay.yaml")
    assert isinstance(spec, athanor.Campaign)
    assert spec.campaign == "p3ht_replay" and spec.space.input_names == P3HT_INPUTS
    assert [o.name for o in spec.objectives] == [P3HT_OBJECTIVE]


def test_run_completes_and_the_samples_table_agrees_with_the_store(finished):
    run = finished
    assert run.status == "completed"
    assert run.spec.campaign == "api_campaign"
    samples = run.samples()
    assert list(samples.columns) == ["sample_id", "batch", "state", "pool_index", *P3HT_INPUTS, P3HT_OBJECTIVE,
                                     "measured_at", "error"]
    assert len(samples) == db_count(run, "SELECT count(*) FROM samples WHERE campaign_id = ?") == 6
    assert samples["sample_id"].is_unique
    assert set(samples["state"]) <= {"learned", "failed"} and (samples["state"] == "failed").any()
    measured = samples[samples["state"] == "learned"]
    assert measured[P3HT_OBJECTIVE].notna().all() and samples.loc[samples["state"] == "failed", "error"].ne("").all()
    # the same table as the run folder's results.csv
    csv = pd.read_csv(run.out / "results.csv", keep_default_na=False)
    assert csv["sample_id"].tolist() == samples["sample_id"].tolist()
    assert csv[P3HT_INPUTS].astype(float).equals(samples[P3HT_INPUTS].astype(float))


def test_measurements_has_one_row_per_logged_measurement(finished):
    run = finished
    table = run.measurements()
    n = db_count(run, "SELECT count(*) FROM events WHERE campaign_id = ? AND kind = 'measurement'")
    assert len(table) == n == run.store.count_events("measurement") > 0
    assert list(table.columns) == ["sample_id", "instrument", "time", "duration_s", P3HT_OBJECTIVE,
                                   f"{P3HT_OBJECTIVE} uncertainty"]
    assert isinstance(table["time"].dtype, pd.DatetimeTZDtype) and table["time"].is_monotonic_increasing
    instruments = {i.name for i in run.spec.instruments if i.role == "characterization"}
    assert set(table["instrument"]) <= instruments
    # each measured sample's value is the one its measurement logged
    samples = run.samples().set_index("sample_id")
    for sample_id, value in zip(table["sample_id"], table[P3HT_OBJECTIVE]):
        assert samples.loc[sample_id, P3HT_OBJECTIVE] == value


def test_best_is_the_highest_measured_sample_and_summary_says_so(finished):
    run = finished
    best = run.best()
    samples = run.samples()
    assert best[P3HT_OBJECTIVE] == samples[P3HT_OBJECTIVE].max()
    summary = run.summary()
    assert summary["best"]["sample_id"] == best["sample_id"]
    assert summary["status"] == "completed" and summary["n_experiments"] == 6
    assert summary == {**json.loads((run.out / "summary.json").read_text()), "wall_s": summary["wall_s"]}


def test_plot_draws_best_so_far_against_experiment_number(finished):
    from matplotlib.figure import Figure

    run = finished
    fig = run.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    measured, best_line, random_line, pool_best = fig.axes[0].get_lines()
    values = run.samples().dropna(subset=[P3HT_OBJECTIVE])[P3HT_OBJECTIVE].tolist()
    assert list(measured.get_ydata()) == values
    assert list(best_line.get_ydata()) == [max(values[: i + 1]) for i in range(len(values))]
    assert list(best_line.get_xdata()) == list(range(1, len(values) + 1))
    assert len(random_line.get_ydata()) == len(values)
    rows = pd.read_csv(ROOT / "data" / "liang2021" / "P3HT.csv")[P3HT_OBJECTIVE]  # repeated blends are averaged
    assert max(values) <= pool_best.get_ydata()[0] <= rows.max()
    fig.savefig(run.out / "from_api.png")  # no backend needed to save it

    mine = Figure().subplots()
    assert run.plot(ax=mine) is mine.figure and len(mine.get_lines()) == 4
    with pytest.raises(AthanorError, match="no objective 'nope'"):
        run.plot(objective="nope")


def test_open_run_reads_the_same_campaign_back(finished):
    with athanor.open_run(finished.out) as again:
        assert again.campaign_id == finished.campaign_id and again.status == "completed"
        pd.testing.assert_frame_equal(again.samples(), finished.samples())
        pd.testing.assert_frame_equal(again.measurements(), finished.measurements())
        assert again.campaign_id in repr(again)


def test_a_campaign_file_with_mistakes_is_one_clear_error(tmp_path):
    with pytest.raises(SpecError, match="no such campaign file"):
        athanor.load(tmp_path / "missing.yaml")
    bad = write_campaign(tmp_path / "bad.yaml")
    bad.write_text(bad.read_text().replace("batch_size: 2", "batch_size: 2\nbatch_sise: 3")
                   .replace("experiments: 8", "experiments: -1"))
    with pytest.raises(SpecError) as caught:
        athanor.load(bad)
    assert len(caught.value.problems) == 2 and "batch_sise" in str(caught.value) and "experiments" in str(caught.value)
    (tmp_path / "broken.yaml").write_text("campaign: [unclosed\n")
    with pytest.raises(SpecError, match="malformed YAML"):
        athanor.load(tmp_path / "broken.yaml")
    with pytest.raises(SpecError):
        athanor.run(bad, tmp_path / "never", in_process=True, progress=False)
    assert not (tmp_path / "never").exists()  # nothing is written for a campaign that does not validate


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path, finished):
    with pytest.raises(AthanorError, match="no campaign here"):
        athanor.open_run(tmp_path)
    with pytest.raises(AthanorError, match="no campaign here"):
        athanor.open_run(tmp_path / "nowhere")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(AthanorError, match="unreadable"):
        athanor.open_run(tmp_path)
    config = write_campaign(tmp_path / "c.yaml")
    with pytest.raises(AthanorError, match="already holds a campaign"):
        athanor.run(config, finished.out, in_process=True, progress=False)
    with pytest.raises(AthanorError, match="needs out="):
        athanor.run(config, resume=True, in_process=True)
    with pytest.raises(TypeError, match="campaign file's path, not a Campaign"):
        athanor.run(athanor.load(config), tmp_path / "run", in_process=True)


def test_run_from_inside_an_event_loop_as_in_a_notebook_can_be_interrupted_and_resumed(tmp_path):
    """A Jupyter kernel runs an event loop: the campaign runs in a worker thread, and interrupting the
    kernel stops it with what was measured kept, as Ctrl-C does to `athanor run`."""
    config = write_campaign(tmp_path / "c.yaml", budget=8, batch_size=2, latency_s=0.2)
    out = tmp_path / "run"

    def interrupt_after_two_learned() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "run.json").exists():
                with athanor.open_run(out) as watching:
                    if (watching.samples()["state"] == "learned").sum() >= 2:
                        _thread.interrupt_main()
                        return
            time.sleep(0.05)

    async def in_a_kernel() -> athanor.Run:
        asyncio.get_running_loop()  # what sends asyncio.run elsewhere, and athanor.run to a thread
        return athanor.run(config, out, in_process=True, progress=False)

    watcher = threading.Thread(target=interrupt_after_two_learned, daemon=True)
    watcher.start()
    loop = asyncio.new_event_loop()  # not asyncio.run, whose own SIGINT handler a kernel does not have
    try:
        with pytest.raises(KeyboardInterrupt, match="resume=True"):
            loop.run_until_complete(in_a_kernel())
    finally:
        loop.close()
    watcher.join()
    with athanor.open_run(out) as stopped:
        assert stopped.status == "running or interrupted"
        assert 2 <= (stopped.samples()["state"] == "learned").sum() < 8
        assert db_count(stopped, "SELECT count(*) FROM leases WHERE campaign_id = ?") == 0  # the lease was given back

    with athanor.run(config, out, resume=True, in_process=True, progress=False) as resumed:
        assert resumed.status == "completed"
        assert resumed.summary()["n_experiments"] == 8


@pytest.mark.slow
def test_run_on_ray_from_inside_an_event_loop(tmp_path, ray_address):
    config = write_campaign(tmp_path / "c.yaml", budget=4, batch_size=2)

    async def in_a_kernel() -> athanor.Run:
        return athanor.run(config, tmp_path / "run", progress=False)

    with asyncio.run(in_a_kernel()) as run:
        assert run.status == "completed"
        assert len(run.samples()) == 4 == len(run.measurements())
    with athanor.open_run(tmp_path / "run") as again:
        assert again.summary()["n_measured"] == 4


def test_the_quickstart_notebook_is_stored_without_outputs():
    import nbformat
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_quickstart_notebook_runs_from_examples(tmp_path):
    """Every cell of examples/quickstart.ipynb runs without error, from a copy of the repository's
    layout (examples/, configs/, data/) so that its run folder is left in tmp_path."""
    import nbformat
    import nbclient
    import ipykernel  # noqa: F401 -- the kernel nbclient starts
    for folder in ("configs", "data"):
        (tmp_path / folder).symlink_to(ROOT / folder, target_is_directory=True)
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(NOTEBOOK, examples)
    nb = nbformat.read(examples / NOTEBOOK.name, as_version=4)
    started = time.monotonic()
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(examples)}}).execute()  # raises on a failing cell
    print(f"notebook ran in {time.monotonic() - started:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the progress plot shows inline
    assert any("text/html" in o.get("data", {}) for o in outputs)  # the DataFrames do too
    (summary,) = (examples / "runs").glob("p3ht_replay/*/summary.json")
    assert json.loads(summary.read_text())["n_experiments"] == 8
