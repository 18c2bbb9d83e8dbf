"""`athanor dry-run`: a campaign against its simulated world, on the path a real run takes, with what
Athanor promises checked at the end.

The campaign runs as `athanor run` runs it — conductor, agents as Ray actors, instruments' Bluesky
plans on simulated devices, the SQLite store — with every instrument on the `simulated` backend, its
own store and Ray instance, and instrument time scaled to nothing. Each session runs in a child
process; `--crash-at K` kills that process (SIGKILL, as a power cut would) the moment the K-th
instrument step has finished at its instrument and before the conductor logged its result, and the next
session resumes the campaign from its store. A scripted operator approves whatever waits for one.
Then the invariants (athanor/testing/invariants.py) are checked on the store and the run folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from athanor.errors import AthanorError

if TYPE_CHECKING:  # the command line builds its parser from here: nothing heavy at import
    from athanor.spec import Campaign
    from athanor.testing.invariants import Check

SESSION_TIMEOUT_S = 900.0
OPERATOR = "dry-run-operator"
SPEC_FILE = "dry_run_campaign.json"  # JSON is YAML: the campaign as the dry run runs it


@dataclass
class DryRunReport:
    config: str
    spec: Campaign
    out: Path
    crash_at: list[int]
    notes: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    decisions: int = 0
    checks: list[Check] = field(default_factory=list)
    times: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def dry_spec(spec: Campaign, experiments: int | None = None, faults: float | None = None) -> tuple[Campaign, list[str]]:
    """The campaign as a dry run runs it, and what was changed to make it so."""
    from athanor.spec import Campaign, default_instruments

    data = spec.model_dump(mode="json")
    notes = []
    if spec.lab is not None:
        notes.append(f"lab {spec.lab!r}: the world's own simulated instruments stand in for the lab's")
        data["lab"], data["instruments"] = None, [i.model_dump(mode="json") for i in default_instruments()]
    epics = [i["name"] for i in data["instruments"] if i["backend"] == "epics"]
    if epics:
        notes.append(f"{', '.join(epics)}: simulated devices instead of EPICS (the plans are the same)")
    for instrument in data["instruments"]:
        instrument["backend"] = "simulated"
    if spec.store_url or spec.ray_address:
        notes.append("its own SQLite store and Ray instance, not the campaign's")
    data.update(store_url=None, ray_address=None, ioc="external")
    data["world"].update(time_scale=0.0, latency_s=0.0)
    if experiments is not None:
        data["budget"]["experiments"] = experiments
    if faults is not None:
        data["world"]["failure_rate"] = faults
    data["budget"]["wall_time_s"] = None
    return Campaign.model_validate(data), notes


def dry_run(config: str | Path, out: str | Path | None = None, experiments: int | None = None,
            faults: float | None = None, crash_at: list[int] | tuple[int, ...] = (),
            say: Any = print) -> DryRunReport:
    """Run the campaign of `config` dry and check it; AthanorError if the file itself is refused."""
    from collections import Counter

    import ray

    from athanor.campaign import prepare
    from athanor.runtime import connect
    from athanor.spec import load_campaign
    from athanor.testing.invariants import CampaignLog, check_campaign, step_times

    begun = time.monotonic()
    spec, notes = dry_spec(load_campaign(config), experiments, faults)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix=f"athanor-dry-run-{spec.campaign}-"))
    if (out / "run.json").exists():
        raise AthanorError(f"{out} already holds a campaign: give the dry run another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / SPEC_FILE).write_text(spec.model_dump_json(indent=1))
    store, spec = prepare(out / SPEC_FILE, out)
    store.release_lease()  # each session takes it in its own process
    report = DryRunReport(str(config), spec, out, sorted(set(crash_at)), notes)
    say(f"dry run of {spec.campaign} ({config}): {spec.budget.experiments} experiments on the "
        f"{spec.world.kind} world, seed {spec.seed}, failure rate {spec.world.failure_rate:g}"
        + (f", killed after instrument steps {', '.join(map(str, report.crash_at))}" if report.crash_at else "")
        + f"; run folder {out}")
    for note in notes:
        say(f"  {note}")
    snapshots: list[dict[str, dict[str, float]]] = []
    try:
        started_ray = connect("local")
        try:
            address = ray.get_runtime_context().gcs_address
            for crash in [*report.crash_at, None]:
                session = _session(store, spec, out, address, crash, len(report.sessions) + 1)
                report.sessions.append(session)
                report.decisions += len(session["decided"])
                if not session["killed"]:
                    break
                snapshots.append({s["id"]: s["values"] for s in store.samples() if s["values"]})
        finally:
            if started_ray:
                ray.shutdown()
        log = CampaignLog.read(store)  # every document once, for the checks and the step times
        report.checks = [*check_campaign(store, spec, out, snapshots, log), _check_sessions(report)]
        report.times = step_times(store, log)
        report.states = dict(Counter(s["state"] for s in store.samples()))
    finally:
        store.close()
    report.wall_s = time.monotonic() - begun
    return report


def _session(store: Any, spec: Campaign, out: Path, address: str, crash: int | None, number: int) -> dict[str, Any]:
    """One conductor session in a child process; the scripted operator answers meanwhile."""
    from athanor.testing.runner import answer_operator, approve_all

    log = out / f"dry-run-session-{number}.log"
    command = [sys.executable, "-m", "athanor.dryrun", str(out), "--ray-address", address]
    if crash is not None:
        command += ["--crash-after", str(crash)]
    begun, decided = time.monotonic(), []
    with log.open("w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while child.poll() is None:
                decided += answer_operator(store, spec, approve_all, OPERATOR)
                if time.monotonic() - begun > SESSION_TIMEOUT_S:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    break
                time.sleep(0.2)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
    wall_s = time.monotonic() - begun
    timed_out = wall_s > SESSION_TIMEOUT_S
    return {"number": number, "crash_after": crash, "exit": child.returncode, "timed_out": timed_out,
            "killed": child.returncode == -signal.SIGKILL and not timed_out,
            "wall_s": wall_s, "decided": decided, "log": str(log), "tail": tail}


def _check_sessions(report: DryRunReport) -> Check:
    from athanor.testing.invariants import Check

    check = Check("sessions_as_planned", "each session was killed where asked, and the last one ran the campaign "
                  "to its end")
    for s in report.sessions:
        if s["timed_out"]:
            check.violations.append(f"session {s['number']} did not finish within {SESSION_TIMEOUT_S:g} s ({s['log']})")
        elif s["crash_after"] is not None and not s["killed"] and s["exit"] == 0:
            check.violations.append(f"the kill after instrument step {s['crash_after']} never happened: the campaign "
                                    "ended first")
        elif not s["killed"] and s["exit"] != 0:
            check.violations.append(f"session {s['number']} exited {s['exit']}: {' | '.join(s['tail'])} ({s['log']})")
    return check


# --- the child: one conductor session -----------------------------------------------------------------

class _KillAfter:
    """An instrument actor's handle that kills this process once `after` instrument runs have finished
    in the campaign (counted from the store): the run's documents are stored, its result not yet logged."""

    def __init__(self, handle: Any, store: Any, after: int):
        self.handle, self.store, self.after = handle, store, after

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.handle, name)
        if name != "run":
            return method
        outer = self

        class _Run:
            @staticmethod
            def remote(*args: Any) -> Any:
                async def call() -> Any:
                    reply = await method.remote(*args)
                    if outer.finished_runs() >= outer.after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return reply
                return call()
        return _Run

    def finished_runs(self) -> int:
        from sqlalchemy import func, select
        from sqlalchemy.orm import Session

        from athanor.tables import DocumentRow

        with Session(self.store.engine) as s:
            return s.scalar(select(func.count()).select_from(DocumentRow).where(
                DocumentRow.campaign_id == self.store.campaign_id, DocumentRow.name == "stop")) or 0


def _child(out: Path, ray_address: str, crash_after: int | None) -> int:
    """Resume the campaign in `out` on the Ray cluster at `ray_address` and run it to its end (or die)."""
    from athanor.campaign import prepare
    from athanor.conductor import Conductor
    from athanor.report import write_outputs
    from athanor.runtime import connect, start_agents, stop_agents

    store, spec = prepare(out / SPEC_FILE, out, resume=True)
    connect(ray_address)
    agents = start_agents(spec, store.campaign_id, store.url)
    handles = dict(agents.instruments)
    if crash_after is not None:
        agents.instruments = {n: _KillAfter(h, store, crash_after) for n, h in handles.items()}
    try:
        status = asyncio.run(Conductor(spec, store, agents, previous_wall_s=store.wall_time_s()).run())
    finally:
        agents.instruments = handles
        stop_agents(agents)
    write_outputs(store, spec, out, status)
    store.release_lease()
    print(f"session ended: {status}")
    return 0


# --- what the user reads ----------------------------------------------------------------------------

def format_report(report: DryRunReport) -> str:
    lines = []
    for s in report.sessions:
        how = (f"killed after instrument step {s['crash_after']}" if s["killed"] else
               f"stopped after {SESSION_TIMEOUT_S:g} s" if s["timed_out"] else
               "ran to the end" if s["exit"] == 0 else f"exited {s['exit']}")
        lines.append(f"session {s['number']}: {how} in {s['wall_s']:.1f} s"
                     + (f"; the scripted operator approved {len(s['decided'])}" if s["decided"] else ""))
    lines.append("samples: " + (", ".join(f"{n} {state}" for state, n in sorted(report.states.items())) or "none"))
    for c in report.checks:
        lines.append(f"  {'ok  ' if c.passed else 'FAIL'} {c.name}: {c.question}")
        lines += [f"       {v}" for v in c.violations[:20]]
        if len(c.violations) > 20:
            lines.append(f"       ... and {len(c.violations) - 20} more")
    if report.times:
        lines.append("time per step (median × count): " + ", ".join(
            f"{step} {statistics.median(t):.3g} s × {len(t)}" for step, t in sorted(report.times.items())))
    failed = sum(not c.passed for c in report.checks)
    verdict = (f"all {len(report.checks)} checks hold" if not failed else
               f"{failed} of {len(report.checks)} checks failed")
    lines.append(f"{report.spec.campaign}: {verdict} ({report.wall_s:.1f} s; outputs in {report.out})")
    return "\n".join(lines)


def junit_xml(reports: list[DryRunReport]) -> str:
    """One test suite per campaign, one test case per check: what CI systems show as test results."""
    suites = ET.Element("testsuites", name="athanor dry-run", tests=str(sum(len(r.checks) for r in reports)),
                        failures=str(sum(not c.passed for r in reports for c in r.checks)),
                        time=f"{sum(r.wall_s for r in reports):.3f}")
    for r in reports:
        suite = ET.SubElement(suites, "testsuite", name=f"dry-run {r.spec.campaign}", tests=str(len(r.checks)),
                              failures=str(sum(not c.passed for c in r.checks)), errors="0", skipped="0",
                              time=f"{r.wall_s:.3f}", timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        properties = ET.SubElement(suite, "properties")
        for name, value in (("config", r.config), ("seed", r.spec.seed), ("experiments", r.spec.budget.experiments),
                            ("failure_rate", r.spec.world.failure_rate), ("crash_at", " ".join(map(str, r.crash_at))),
                            ("run_folder", r.out)):
            ET.SubElement(properties, "property", name=name, value=str(value))
        for c in r.checks:
            case = ET.SubElement(suite, "testcase", classname=f"athanor.dry_run.{r.spec.campaign}", name=c.name, time="0")
            if c.violations:
                failure = ET.SubElement(case, "failure", type="InvariantViolation", message=c.violations[0][:1000])
                failure.text = "\n".join(c.violations)
            else:
                ET.SubElement(case, "system-out").text = c.question
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def run_command(args: argparse.Namespace) -> int:
    """`athanor dry-run`: 0 when every check of every campaign holds, 1 naming each violation, 2 when a
    campaign file is refused (before anything runs)."""
    if args.experiments is not None and args.experiments < 1:
        raise AthanorError(f"--experiments must be at least 1, got {args.experiments}")
    if args.faults is not None and not 0 <= args.faults < 1:
        raise AthanorError(f"--faults is a probability per step, from 0 up to (not including) 1; got {args.faults}")
    if any(k < 1 for k in args.crash_at):
        raise AthanorError(f"--crash-at counts instrument steps from 1; got {' '.join(map(str, args.crash_at))}")
    from athanor.spec import load_campaign
    from athanor.testing.invariants import Check

    names = [load_campaign(c).campaign for c in args.configs]  # every file refused before anything runs
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice and args.out is not None:
        raise AthanorError(f"campaign {twice[0]!r} is named by two files; with --out each needs its own name")
    reports = []
    for config, name in zip(args.configs, names):
        out = None if args.out is None else (Path(args.out) / name if len(args.configs) > 1 else Path(args.out))
        try:
            report = dry_run(config, out, args.experiments, args.faults, args.crash_at)
        except AthanorError as exc:  # it could not run (Ray, a folder): a failure of this campaign, not the file's
            print(f"athanor: error: {name}: {exc}", file=sys.stderr)
            report = DryRunReport(str(config), load_campaign(config), Path(out or "."), list(args.crash_at),
                                  checks=[Check("dry_run_ran", "the dry run could start the campaign", [str(exc)])])
        print(format_report(report))
        reports.append(report)
    if args.junit:
        Path(args.junit).parent.mkdir(parents=True, exist_ok=True)
        Path(args.junit).write_text(junit_xml(reports))
        print(f"JUnit XML: {args.junit}")
    return 0 if all(r.passed for r in reports) else 1


def add_parser(sub: Any) -> None:
    dry = sub.add_parser(
        "dry-run", help="run campaigns against their simulated worlds and check what Athanor promises; exit 1 "
        "naming each violation", description=__doc__.split("\n\n")[0])
    dry.add_argument("configs", nargs="+", metavar="CONFIG", help="campaign files (YAML)")
    dry.add_argument("--experiments", type=int, metavar="N", help="experiment budget (default: the file's)")
    dry.add_argument("--faults", type=float, metavar="RATE", help="probability that an instrument step faults "
                     "(default: the file's world.failure_rate)")
    dry.add_argument("--crash-at", type=int, nargs="+", action="extend", default=[], metavar="K",
                     help="kill the run after the K-th instrument step has finished, then resume it (repeatable)")
    dry.add_argument("--junit", metavar="FILE", help="write the checks as JUnit XML, one test case each")
    dry.add_argument("--out", metavar="DIR", help="run folder (default: a new temporary folder; with several "
                     "campaigns, DIR/<campaign>)")
    dry.set_defaults(func=run_command)


def main(argv: list[str] | None = None) -> int:
    """The child session: `python -m athanor.dryrun OUT --ray-address ADDR [--crash-after K]`."""
    parser = argparse.ArgumentParser(prog="python -m athanor.dryrun", description="one session of a dry run")
    parser.add_argument("out")
    parser.add_argument("--ray-address", required=True)
    parser.add_argument("--crash-after", type=int)
    args = parser.parse_args(argv)
    return _child(Path(args.out), args.ray_address, args.crash_after)


if __name__ == "__main__":
    sys.exit(main())
