"""The Python API, for notebooks and scripts: load a campaign, run it, and look at what it found.

    import athanor

    spec = athanor.load("configs/p3ht_replay.yaml")        # validated; a SpecError says what is wrong
    run = athanor.run("configs/p3ht_replay.yaml", max_experiments=8)
    run.samples()        # one row per sample: inputs, outputs, state
    run.measurements()   # one row per measurement: instrument, time, values, uncertainties
    run.best()           # the best sample so far
    run.plot()           # best so far against experiment number (a matplotlib Figure)

    with athanor.open_run("runs/p3ht_replay/20250101-120000") as run:   # a run folder, finished or not
        print(run.status)

A thin layer over athanor.spec, athanor.campaign and athanor.report, which `athanor run`, `status`
and the run folder's outputs also use: a campaign run here is the same as one run from the shell.
Every problem the user can fix is one `AthanorError` with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from athanor.errors import AthanorError

if TYPE_CHECKING:  # the heavy modules are imported when first used, not with `import athanor`
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from athanor.spec import Campaign
    from athanor.store import Store

__all__ = ["Run", "load", "open_run", "run"]

T = TypeVar("T")


def load(path: str | Path) -> Campaign:
    """Read and validate a campaign file (its designer and world included); the campaign, or one
    `SpecError` listing every problem with its place in the file."""
    from athanor.spec import load_campaign

    return load_campaign(path)


def run(config: str | Path, out: str | Path | None = None, *, seed: int | None = None,
        max_experiments: int | None = None, resume: bool = False, progress: bool = True,
        in_process: bool = False) -> Run:
    """Run the campaign in `config` to its end, as `athanor run` does, and return its run folder.

    `out` defaults to ``runs/<campaign>/<date-time>`` under the working directory; `seed` and
    `max_experiments` override the file's; `resume=True` continues the campaign already in `out`.
    `progress` shows a progress bar. The agents run as Ray actors on a local Ray instance (or the
    campaign's `ray_address`); `in_process=True` runs them as plain objects in this Python process
    instead: no Ray to start, the same conductor, instruments and store, so quicker for a small
    simulated campaign. Interrupting the kernel (or Ctrl-C) stops the campaign with everything
    measured kept; `resume=True` continues it.
    """
    from athanor.campaign import execute, prepare

    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"athanor.run takes the campaign file's path, not a {type(config).__name__}")
    spec = load(config)
    if out is None:
        if resume:
            raise AthanorError("resume=True needs out=, the run folder of the campaign to continue")
        out = Path("runs") / spec.campaign / time.strftime("%Y%m%d-%H%M%S")  # as `athanor run` names it
    if in_process and spec.lab is not None:
        raise AthanorError(f"campaign {spec.campaign!r} runs on lab {spec.lab!r}, which needs Ray: "
                           "run it without in_process=True")
    store, spec = prepare(config, out, resume=resume, seed=seed, max_experiments=max_experiments)
    watch = _Progress(spec, out, progress)
    runner = _execute_in_process if in_process else execute
    try:
        _outside_event_loop(lambda: runner(store, spec, out, on_progress=watch), watch.stop)
    except KeyboardInterrupt:
        store.close()
        again = f"athanor.run({str(config)!r}, {str(out)!r}, resume=True{', in_process=True' * in_process})"
        raise KeyboardInterrupt(f"campaign interrupted; the store keeps everything measured: continue it with "
                                f"{again}") from None
    except BaseException:
        store.close()
        raise
    finally:
        watch.close()
    return Run(store, spec, out)


def open_run(out: str | Path) -> Run:
    """The campaign kept in a run folder (finished, stopped, or still running elsewhere)."""
    from athanor.campaign import open_run as open_store

    store, spec = open_store(out)
    return Run(store, spec, out)


class Run:
    """A run folder: the campaign's spec and store, and views of them as pandas DataFrames.
    Each view reads the store when called, so a campaign still running shows its latest state."""

    def __init__(self, store: Store, spec: Campaign, out: str | Path):
        self.store = store
        self.spec = spec
        self.out = Path(out)

    @property
    def campaign_id(self) -> str:
        return self.store.campaign_id

    @property
    def status(self) -> str:
        """'completed', 'stopped', ... once the campaign ended; 'running or interrupted' before."""
        from athanor.report import status_report

        return str(status_report(self.store, self.spec)["status"])

    def summary(self) -> dict[str, Any]:
        """What summary.json holds: counts, the best sample, wall time, time per instrument, ..."""
        from athanor.report import summarize

        return summarize(self.store, self.spec, self.status)

    def samples(self) -> pd.DataFrame:
        """One row per sample, in the order proposed: sample_id, batch, state, pool_index, one column
        per input and per output (NaN until measured), measured_at, error (results.csv's table)."""
        from athanor.report import results_table

        return results_table(self.store, self.spec)

    def measurements(self) -> pd.DataFrame:
        """One row per measurement logged, in order: sample_id, instrument, time (UTC), duration_s,
        then one column per measured value and one '<name> uncertainty' column per uncertainty given."""
        import pandas as pd

        rows, values, errors = [], {}, {}
        for m in self.store.events(kind="measurement"):
            row: dict[str, Any] = {"sample_id": m.sample_id, "instrument": m.instrument, "time": m.created_at,
                                   "duration_s": m.duration_s}
            row.update(m.values)
            row.update({f"{name} uncertainty": v for name, v in m.uncertainties.items()})
            values.update(dict.fromkeys(m.values))
            errors.update(dict.fromkeys(f"{name} uncertainty" for name in m.uncertainties))
            rows.append(row)
        frame = pd.DataFrame(rows, columns=["sample_id", "instrument", "time", "duration_s", *values, *errors])
        frame["time"] = pd.to_datetime(frame["time"], utc=True)
        return frame

    def best(self) -> pd.Series | None:
        """The best measured sample that meets the outcome constraints, as its row of `samples()`
        (best on the first objective, as summary.json says); None while nothing is measured."""
        from athanor.objectives import best_sample

        found = best_sample(self.store.samples(), self.spec.objectives, self.spec.outcome_constraints)
        if found is None:
            return None
        table = self.samples()
        return table[table["sample_id"] == found["id"]].iloc[0]

    def plot(self, ax: Axes | None = None, objective: str | None = None) -> Figure:
        """The run folder's progress plot (plots/progress.png), drawn now: each measured value and the
        best so far against experiment number and, for a replayed dataset, what random sampling would be
        expected to have found and the dataset's best; one panel per objective (or only `objective`, or
        the first one when drawing into `ax`). Returns the Figure, which a notebook shows inline; no
        matplotlib backend is chosen or changed (save it with `savefig`)."""
        from matplotlib.figure import Figure

        _backend_ready()
        objectives = [o for o in self.spec.objectives if objective in (None, o.name)]
        if not objectives:
            raise AthanorError(f"no objective {objective!r}: the campaign's are "
                               f"{', '.join(o.name for o in self.spec.objectives)}")
        if ax is None:
            fig = Figure(figsize=(5 * len(objectives), 3.6), layout="tight")
            axes = list(fig.subplots(1, len(objectives), squeeze=False)[0])
        else:
            fig, axes, objectives = ax.figure, [ax], objectives[:1]
        from athanor.report import draw_progress

        samples = self.store.samples()
        for axis, o in zip(axes, objectives):
            draw_progress(axis, samples, self.spec, o)
        return fig

    def close(self) -> None:
        """Let go of the store's connections (the Run can not be read after)."""
        self.store.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Run {self.campaign_id} in {self.out}>"


# --- running a campaign from a notebook --------------------------------------------------------------
class _Progress:
    """The conductor's `on_progress`: a progress bar (as `athanor run` shows it), and the place where
    an interrupt reaches a campaign that runs in a worker thread."""

    def __init__(self, spec: Campaign, out: str | Path, show: bool):
        from tqdm import tqdm

        self.out, self.stopping, self.waiting = out, threading.Event(), 0
        self.bar = tqdm(total=spec.budget.experiments, desc=spec.campaign, unit="exp", disable=not show)

    def __call__(self, counts: dict[str, int]) -> None:
        if self.stopping.is_set():
            raise KeyboardInterrupt  # in the conductor's loop, as Ctrl-C raises it under `athanor run`
        if counts.get("awaiting", 0) > self.waiting:
            self.bar.write(f"{counts['awaiting']} waiting for an operator: see `athanor status {self.out}`; "
                           f"`athanor approve|reject {self.out} ID`", file=sys.stderr)
        self.waiting = counts.get("awaiting", 0)
        done = counts.get("learned", 0) + counts.get("failed", 0)
        if done != self.bar.n:
            self.bar.update(done - self.bar.n)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.bar.close()


def _execute_in_process(store: Store, spec: Campaign, out: str | Path,
                        on_progress: Callable[[dict[str, int]], None] | None = None) -> dict[str, Any]:
    """`athanor.campaign.execute` with the agents as plain objects in this process instead of actors."""
    from athanor.campaign import channel_access
    from athanor.conductor import Conductor
    from athanor.report import write_outputs
    from athanor.runtime import local_agents

    try:
        with channel_access(spec, Path(out)) as environment:
            agents = local_agents(spec, store.campaign_id, store.url, environment)
            conductor = Conductor(spec, store, agents, previous_wall_s=store.wall_time_s(), on_progress=on_progress)
            status = asyncio.run(conductor.run())
        return write_outputs(store, spec, Path(out), status)
    finally:
        store.release_lease()


def _outside_event_loop(call: Callable[[], T], stop: Callable[[], None]) -> T:
    """`call()`, which runs its own event loop. A Jupyter kernel already runs one in this thread, where
    asyncio.run cannot start another: there the call runs in a worker thread while this one waits, and
    an interrupt calls `stop` (the campaign ends at its next turn) and waits for the worker to finish."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return call()
    outcome: dict[str, Any] = {}
    finished = threading.Event()  # not Thread.join: interrupted, it may take a live thread for a finished one

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 -- handed to the waiting thread, which raises it
            outcome["error"] = exc
        finally:
            finished.set()

    interrupted = False
    try:
        threading.Thread(target=work, name="athanor-campaign", daemon=True).start()
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        interrupted = True
    while not finished.is_set():  # the campaign holds the store and its lease until it has stopped
        stop()
        try:
            finished.wait()
        except KeyboardInterrupt:  # asked again: still wait, or the store would close under it
            continue
    if interrupted and "value" not in outcome:
        raise KeyboardInterrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _backend_ready() -> str:
    """The matplotlib backend in use, loaded now: loading the inline backend is what sets a notebook up
    to show figures, a Figure returned by a cell included. Nothing is drawn until a backend is loaded,
    so while no figure is open, switching to the same backend changes nothing else."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    if not plt.get_fignums():
        with contextlib.suppress(ImportError):  # a backend that cannot load here: a Figure still saves
            plt.switch_backend(backend)
    return backend
