"""The `athanor` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from athanor.errors import AthanorError

DESCRIPTION = """Athanor: autonomous-lab campaigns for materials discovery.

A campaign file says what may be made, what is wanted and the budget; `athanor run` closes the loop
design -> synthesize -> characterize -> learn on simulated or real instruments, and keeps every
message in a store that `status`, `approve`, `chat` and `serve` read while it runs."""

FIRST_STEPS = """first steps:
  athanor run configs/demo.yaml --out runs/demo     a campaign that learns (~30 s), then see runs/demo/
  athanor status runs/demo                          what it did
  athanor help run                                  any command's options, with an example

every command: athanor help COMMAND, or athanor COMMAND --help"""

# One example per command, shown at the end of its --help (tests check that every command has one).
EXAMPLES = {
    "run": "athanor run configs/demo.yaml --out runs/demo --seed 1",
    "validate": "athanor validate configs/demo.yaml",
    "status": "athanor status runs/demo --json",
    "approve": "athanor approve runs/gated S0001 S0002 --user ada",
    "reject": "athanor reject runs/gated S0003 --reason \"rather not fire at 800 °C\" --user ada",
    "edit": "athanor edit runs/gated S0004 temperature_c=750 --reason \"below the ZnO sublimation\" --user ada",
    "pause": "athanor pause runs/gated --user ada",
    "unpause": "athanor unpause runs/gated --user ada",
    "batch-size": "athanor batch-size runs/gated 2 --user ada",
    "bench": "athanor bench designers --config configs/alloy_design.yaml --budget 16 --out runs/bench-alloy",
    "bench optimizers": "athanor bench optimizers --dataset data/liang2021/P3HT.csv --inputs-all-but-objective "
                        "--objective \"Conductivity (measured) (S/cm)\" --direction max --budget 40 --repeats 3 "
                        "--out runs/bench-p3ht",
    "bench designers": "athanor bench designers --config configs/alloy_design.yaml --budget 16 --repeats 3 "
                       "--out runs/bench-alloy",
    "bench instrument_pool": "athanor bench instrument_pool --samples 48 --out runs/bench-pool --no-results",
    "plan": "athanor plan BaTiO3 --batch-g 5 --top 3",
    "chat": "athanor chat runs/gated --user ada -m \"why S0003?\"",
    "serve": "athanor serve runs/demo runs/gated --port 8765",
    "users": "athanor users add ada --role operator",
    "users add": "athanor users add ada --role operator",
    "users list": "athanor users list --json",
    "users revoke": "athanor users revoke ada",
    "lab": "athanor lab serve configs/lab_demo.yaml",
    "lab serve": "athanor lab serve configs/lab_demo.yaml --json",
    "lab status": "athanor lab status --ray-address 127.0.0.1:6379",
    "lab restore": "athanor lab restore lab_demo furnace_b --ray-address 127.0.0.1:6379",
    "dry-run": "athanor dry-run configs/solid_state_demo.yaml --crash-at 3 --faults 0.1 --junit dry-run.xml",
    "export": "athanor export runs/demo --documents demo-documents.jsonl",
    "world": "athanor world eval alloy --composition Fe0.7Co0.3",
    "world eval": "athanor world eval alloy --composition Fe0.7Co0.3 --set structure=bcc",
    "withdraw": "athanor withdraw runs/gated 4",
    "restore": "athanor restore runs/epics furnace1 --user ada",
    "ioc": "athanor ioc configs/solid_state_epics.yaml --list-pvs",
    "schema": "athanor schema > protocol.schema.json",
    "help": "athanor help run",
}


def _run(args: argparse.Namespace) -> int:
    began = args.began
    from tqdm import tqdm

    from athanor.campaign import execute, prepare
    from athanor.report import format_summary

    store, spec = prepare(args.config, args.out, resume=args.resume, seed=args.seed,
                          max_experiments=args.max_experiments, approval=args.approval,
                          ray_address=args.ray_address, wall_time_s=args.wall_time)
    outage: list[str] = []

    def on_outage(reason: str) -> None:  # said once: the store retries quietly until it is back or time is up
        if not outage:
            outage.append(reason)
            print(f"athanor: the store is unreachable ({reason}); the campaign waits for it up to "
                  f"{spec.store_retry_s:g} s", file=sys.stderr)

    store.on_outage = on_outage
    if store.controls()["paused"]:
        print(f"{spec.campaign} is paused: nothing starts until `athanor unpause {args.out}`", file=sys.stderr)
    if not args.quiet:
        print(f"athanor: starting Ray and the campaign's agents (a few seconds; the store is {args.out})",
              file=sys.stderr, flush=True)
    bar: Any = None
    ready: list[float] = []
    waiting = [0]

    def on_progress(counts: dict[str, int]) -> None:
        nonlocal bar
        if bar is None:  # the conductor's first turn: everything has started
            ready.append(time.monotonic() - began)
            bar = tqdm(total=spec.budget.experiments, desc=spec.campaign, unit="exp", disable=args.quiet or None)
        if counts.get("awaiting", 0) > waiting[0]:  # say so once each time more wait, not on every turn
            bar.write(f"{counts['awaiting']} waiting for an operator (proposals, or interrupted steps): "
                      f"see `athanor status {args.out}`; `athanor approve|reject {args.out} ID`", file=sys.stderr)
        waiting[0] = counts.get("awaiting", 0)
        done = counts.get("learned", 0) + counts.get("failed", 0)
        if done == bar.n:
            return
        bar.set_postfix(in_lab=sum(counts.get(k, 0) for k in ("approved", "planned", "synthesized", "characterized")),
                        waiting=counts.get("awaiting", 0), failed=counts.get("failed", 0), refresh=False)
        bar.update(done - bar.n)

    try:
        summary = execute(store, spec, args.out, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    print(format_summary(summary, waited_s=time.monotonic() - began, startup_s=ready[0] if ready else None))
    print(f"outputs in {Path(args.out).resolve()}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from athanor.lab import is_lab_file, load_lab
    from athanor.spec import load_campaign

    if is_lab_file(args.config):
        lab = load_lab(args.config)
        pinned = sum(i.node_resource is not None for i in lab.instruments)
        print(f"{args.config}: ok — lab {lab.lab!r}, {len(lab.instruments)} instruments ({pinned} pinned to a node), "
              f"scheduler {lab.scheduler}")
        return 0
    spec = load_campaign(args.config)
    print(f"{args.config}: ok — campaign {spec.campaign!r}, {len(spec.space.input_names)} inputs, "
          f"{len(spec.objectives)} objective(s), budget {spec.budget.experiments} experiments")
    return 0


def _status(args: argparse.Namespace) -> int:
    from athanor.campaign import open_run
    from athanor.report import decision_line, status_report

    store, spec = open_run(args.dir)
    report = status_report(store, spec)
    status, states = report["status"], report["states"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"campaign {spec.campaign} ({store.campaign_id}): {status}"
          f"{' (PAUSED)' if report['paused'] else ''}; batch size {report['batch_size']}")
    print("samples: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())) if states else "samples: none yet")
    for sample_id, why in report["waiting_because"].items():
        print(f"awaiting approval: {sample_id} ({why})")
    for a in report["approvals"]:
        if a["channel"] != "policy":
            print("  " + decision_line(a))
    for sample_id, why in report["interrupted_because"].items():
        print(f"interrupted: {sample_id} ({why})")
    for name, why in report["quarantined"].items():
        print(f"out of service: {name} ({why}); put it back with 'athanor restore {args.dir} {name}'")
    if report["conductor"]:
        c = report["conductor"]
        print(f"conductor: {c['host']} pid {c['pid']} since {c['started_at']} (heartbeat {c['heartbeat_at']})")
    for refusal in report["refused_commands"]:
        print(f"  refused: {refusal}")
    for c in report["queued_commands"]:
        what = c.get("sample_id") or c.get("instrument") or c.get("batch_size") or ""
        until = ("being carried out" if c["claimed"] else
                 f"waiting for the conductor; `athanor withdraw {args.dir} {c['command_id']}` takes it back")
        print(f"queued #{c['command_id']}: {c.get('action')} {what} by {c.get('user')} via {c.get('channel')} "
              f"at {c['posted_at']} ({until})")
    if report["best"]:
        print(f"best: {report['best']['sample_id']} {report['best']['objectives']}")
    return 0


def _decide(args: argparse.Namespace, approve: bool) -> int:
    from athanor.campaign import open_run
    from athanor.commands import decide, local_operator

    store, spec = open_run(args.dir)
    ids = decide(store, spec, args.sample_ids, approve, local_operator(args.user, spec), getattr(args, "reason", "") or "")
    print(f"{'approved' if approve else 'rejected'}: {' '.join(ids)} (the conductor logs the decision)")
    return 0


def _edit(args: argparse.Namespace) -> int:
    from athanor.campaign import open_run
    from athanor.commands import edit, local_operator
    from athanor.report import inputs_text

    store, spec = open_run(args.dir)
    new = edit(store, spec, args.sample_id, _parse_settings(args.changes, "NAME=VALUE"), local_operator(args.user, spec),
               args.reason or "")
    print(f"revised {args.sample_id}: {inputs_text(new)}; it is planned and judged again (the conductor logs it)")
    return 0


def _control(args: argparse.Namespace, action: str) -> int:
    from athanor.campaign import open_run
    from athanor.commands import control, local_operator

    store, spec = open_run(args.dir)
    control(store, spec, action, local_operator(args.user, spec), batch_size=getattr(args, "n", None))
    print(f"{action.replace('_', ' ')} posted (the conductor logs it)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from athanor.campaign import open_run
    from athanor.commands import control, local_operator

    store, spec = open_run(args.dir)
    control(store, spec, "restore", local_operator(args.user, spec), instrument=args.instrument)
    print(f"restore of {args.instrument} posted (the conductor logs it)")
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from athanor.campaign import open_run
    from athanor.commands import local_operator, withdraw

    store, spec = open_run(args.dir)
    withdrawn, problems = withdraw(store, args.command_ids, local_operator(args.user, spec))
    for c in withdrawn:
        print(f"withdrew command {c['command_id']}: {c.get('action')} {c.get('sample_id') or ''} by {c.get('user')}")
    if problems:
        raise AthanorError("; ".join(problems))
    return 0


def _schema(_args: argparse.Namespace) -> int:
    from athanor.messages import json_schema

    print(json_schema())
    return 0


def _chat(args: argparse.Namespace) -> int:
    from athanor.campaign import open_run
    from athanor.chat import run_chat_command  # LangChain is imported only for the chat
    from athanor.commands import local_operator

    store, spec = open_run(args.dir)
    store.close()
    return run_chat_command(args, local_operator(args.user, spec))


def _serve(args: argparse.Namespace) -> int:
    from athanor.serve import serve  # FastAPI and uvicorn are imported only for the dashboard

    return serve(args.dirs, host=args.host, port=args.port, auth=not args.no_auth)


def _parse_settings(pairs: list[str], form: str = "--set KEY=VALUE") -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise AthanorError(f"{pair!r}: expected {form}")
        try:
            settings[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            settings[key.strip()] = raw
    return settings


def _world_eval(args: argparse.Namespace) -> int:
    from pymatgen.core import Composition

    from athanor import registry
    from athanor.simulators.base import ComputedWorld

    cls = registry.load("athanor.worlds", args.world)
    if not (isinstance(cls, type) and issubclass(cls, ComputedWorld)):
        raise AthanorError(f"world {args.world!r} is not computed from a composition (it replays a dataset)")
    try:
        composition = Composition(args.composition)
    except (ValueError, KeyError) as exc:
        raise AthanorError(f"--composition {args.composition!r}: {exc}") from None
    if not composition.num_atoms > 0:
        raise AthanorError(f"--composition {args.composition!r}: no atoms")
    amounts = {str(el): float(n) for el, n in composition.get_el_amt_dict().items()}
    settings = _parse_settings(args.set)
    unknown = sorted(set(settings) - set(cls.settings)) if cls.settings is not None else []
    if unknown:
        raise AthanorError(f"--set {unknown[0]}: world {args.world!r} reads no such setting; its settings: "
                           f"{', '.join(cls.settings) or 'none'}")
    result = cls().evaluate(amounts, settings)
    print(json.dumps({"world": args.world, "composition": composition.formula.replace(" ", ""), **result}))
    return 0


def _ioc(args: argparse.Namespace) -> int:
    from athanor import ioc, registry
    from athanor.spec import load_campaign

    spec = load_campaign(args.config)
    if args.list_pvs:
        print("\n".join(ioc.pv_names(spec, ioc.lab_hardware(spec, registry.make_world(spec)), args.prefix)))
        return 0
    ioc.serve(spec, args.prefix, args.port, args.interface, tuple(args.stall))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from athanor.planners.synthesis import plan_report

    if not args.batch_g > 0:
        raise AthanorError(f"--batch-g must be positive, got {args.batch_g}")
    if args.top < 1:
        raise AthanorError(f"--top must be at least 1, got {args.top}")
    print(json.dumps(plan_report(args.formula, batch_g=args.batch_g, top=args.top), indent=2))
    return 0


def _benchmarks_module(name: str) -> Any:
    """A harness from the checkout's benchmarks/ folder (not installed: it is not product code)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (folder / f"{name}.py").is_file():
        return None
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def build_parser(benchmarks: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `benchmarks=False` leaves out the bench suites' own options (they import
    torch, a second of start-up that `status`, `approve` and `chat -m` should not pay)."""
    parser = argparse.ArgumentParser(prog="athanor", description=DESCRIPTION, epilog=FIRST_STEPS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"athanor {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    run = sub.add_parser("run", help="run (or resume) a campaign")
    run.add_argument("config", help="campaign file (YAML)")
    run.add_argument("--out", default=None, help="run folder (default: runs/<campaign>/<date-time>)")
    run.add_argument("--resume", action="store_true", help="continue the campaign stored in --out")
    run.add_argument("--seed", type=int, help="override the file's seed (a seed reproduces a simulated campaign)")
    run.add_argument("--max-experiments", type=int, help="override the file's experiment budget")
    run.add_argument("--wall-time", type=float, metavar="S", help="override the wall-time budget (seconds)")
    run.add_argument("--approval", choices=["auto", "always", "rules"], help="override the file's approval policy")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    validate = sub.add_parser("validate", help="check a campaign file; exit 2 on any problem")
    validate.add_argument("config", help="campaign file (YAML), or a lab file")
    validate.set_defaults(func=_validate)

    status = sub.add_parser("status", help="the state of a stored campaign")
    status.add_argument("dir", help="the campaign's run folder (the --out of `athanor run`)")
    status.add_argument("--json", action="store_true", help="everything as one JSON object")
    status.set_defaults(func=_status)

    approve = sub.add_parser("approve", help="approve waiting proposals")
    approve.add_argument("dir", help=RUN_DIR)
    approve.add_argument("sample_ids", nargs="+", metavar="SAMPLE_ID", help="waiting samples, e.g. S0003")
    approve.add_argument("--user", help=USER)
    approve.set_defaults(func=lambda a: _decide(a, True))

    reject = sub.add_parser("reject", help="reject a waiting proposal")
    reject.add_argument("dir", help=RUN_DIR)
    reject.add_argument("sample_ids", nargs="+", metavar="SAMPLE_ID", help="waiting samples, e.g. S0003")
    reject.add_argument("--reason", required=True, help="why, in words: kept with the decision")
    reject.add_argument("--user", help=USER)
    reject.set_defaults(func=lambda a: _decide(a, False))

    edit = sub.add_parser("edit", help="revise a waiting proposal's inputs (it is planned and judged again)")
    edit.add_argument("dir", help=RUN_DIR)
    edit.add_argument("sample_id", metavar="SAMPLE_ID", help="a waiting sample, e.g. S0004")
    edit.add_argument("changes", nargs="+", metavar="NAME=VALUE", help="inputs to change (the others are kept)")
    edit.add_argument("--reason", help="why, in words: kept with the revision")
    edit.add_argument("--user", help=USER)
    edit.set_defaults(func=_edit)

    for name, action, text in (("pause", "pause", "pause a campaign: steps under way finish, none starts"),
                               ("unpause", "resume", "let a paused campaign carry on")):
        control = sub.add_parser(name, help=text)
        control.add_argument("dir", help=RUN_DIR)
        control.add_argument("--user", help=USER)
        control.set_defaults(func=lambda a, action=action: _control(a, action))
    batch = sub.add_parser("batch-size", help="set how many candidates the designer proposes at a time")
    batch.add_argument("dir", help=RUN_DIR)
    batch.add_argument("n", type=int, help="candidates per design request")
    batch.add_argument("--user", help=USER)
    batch.set_defaults(func=lambda a: _control(a, "batch_size"))

    bench = sub.add_parser("bench", help="benchmarks (from a source checkout: benchmarks/ beside athanor/)")
    suites = bench.add_subparsers(dest="suite", required=True)
    for suite in ("optimizers", "designers", "instrument_pool") if benchmarks else ():
        module = _benchmarks_module(suite)
        if module is not None:
            module.add_parser(suites)

    plan = sub.add_parser("plan", help="ranked solid-state synthesis recipes for a target, as JSON")
    plan.add_argument("formula", help="the target, e.g. BaTiO3")
    plan.add_argument("--batch-g", type=float, default=5.0, help="grams of target to make (default 5)")
    plan.add_argument("--top", type=int, default=5, help="how many recipes (default 5)")
    plan.set_defaults(func=_plan)

    chat = sub.add_parser("chat", help="chat with a stored campaign (approve, reject, edit, explain, pause)")
    chat.add_argument("dir", help="the campaign's run folder")
    chat.add_argument("--message", "-m", help="send one message, print the reply and exit")
    chat.add_argument("--user", help="who decides (default: the holder of $ATHANOR_TOKEN, else $ATHANOR_USER, "
                                     "the campaign's approval.operator, or the login name)")
    chat.add_argument("--yes", action="store_true",
                      help="with -m: confirm in advance a message that acts on more than one proposal")
    chat.set_defaults(func=_chat)

    serve = sub.add_parser("serve", help="a web dashboard over run folders, live while campaigns run")
    serve.add_argument("dirs", nargs="+", metavar="DIR", help="run folders (each a campaign)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    serve.add_argument("--no-auth", action="store_true",
                       help="on loopback only: reads and writes without a token (writes record the login name)")
    serve.set_defaults(func=_serve)

    from athanor.users import add_parser as add_users_parser

    add_users_parser(sub)
    from athanor.lab import add_parser as add_lab_parser

    add_lab_parser(sub)

    from athanor.dryrun import add_parser as add_dry_run_parser

    add_dry_run_parser(sub)
    from athanor.export import add_parser as add_export_parser

    add_export_parser(sub)

    world = sub.add_parser("world", help="simulated worlds")
    world_sub = world.add_subparsers(dest="world_command", required=True)
    evaluate = world_sub.add_parser("eval", help="print a world's noiseless measurement of one composition as JSON")
    from athanor import registry

    evaluate.add_argument("world", choices=sorted(registry.available("athanor.worlds")),
                          help="a world computed from a composition (replay worlds need a dataset row)")
    evaluate.add_argument("--composition", required=True, metavar="FORMULA", help="e.g. Fe0.7Co0.3 or SrTiO3")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="a setting the world reads, e.g. structure=bcc (repeatable; unknown keys are refused)")
    evaluate.set_defaults(func=_world_eval)

    take_back = sub.add_parser("withdraw", help="take back posted commands the conductor has not taken up yet "
                                                "(ids from `athanor status`)")
    take_back.add_argument("dir", help=RUN_DIR)
    take_back.add_argument("command_ids", nargs="+", type=int, metavar="COMMAND_ID",
                           help="queued command numbers, as `athanor status` lists them")
    take_back.add_argument("--user", help=USER)
    take_back.set_defaults(func=_withdraw)

    restore = sub.add_parser("restore", help="put an instrument taken out of service back in service")
    restore.add_argument("dir", help=RUN_DIR)
    restore.add_argument("instrument", help="the instrument's name in the campaign file")
    restore.add_argument("--user", help=USER)
    restore.set_defaults(func=_restore)

    ioc = sub.add_parser("ioc", help="serve the campaign's simulated instruments as EPICS PVs (Channel Access)")
    ioc.add_argument("config", help="campaign file whose instruments are served")
    ioc.add_argument("--prefix", help="PV prefix for every instrument (default: each instrument's own)")
    ioc.add_argument("--port", type=int, help="Channel Access server port (default: EPICS_CA_SERVER_PORT, else 5064)")
    ioc.add_argument("--interface", default="127.0.0.1", help="address to serve on (default: loopback)")
    ioc.add_argument("--list-pvs", action="store_true", help="print every PV name, one per line, and exit")
    ioc.add_argument("--stall", action="append", default=[], metavar="INSTRUMENT",
                     help="a drill: this instrument's actions never complete (repeatable)")
    ioc.set_defaults(func=_ioc)
    schema = sub.add_parser("schema", help="print the message protocol's JSON Schema")
    schema.set_defaults(func=_schema)
    helping = sub.add_parser("help", help="this overview, or a command's options: athanor help COMMAND")
    helping.add_argument("topic", nargs="*", metavar="COMMAND", help="a command, e.g. run or 'lab serve'")
    helping.set_defaults(func=lambda a: _help(parser, a.topic))
    _document(parser)
    return parser


RUN_DIR = "the campaign's run folder (the --out of `athanor run`)"
USER = ("who decides (default: the holder of $ATHANOR_TOKEN, else $ATHANOR_USER, the campaign's "
        "approval.operator, or the login name)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("athanor")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown (not installed)"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """A parser's commands: name -> (its parser, its one-line help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            return {name: (p, helps.get(name) or "") for name, p in action.choices.items()}
    return {}


def _document(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Every command's --help opens with what it does and ends with an example."""
    for name, (child, summary) in _subcommands(parser).items():
        where = (*path, name)
        child.formatter_class = argparse.RawDescriptionHelpFormatter
        child.description = child.description or (summary[:1].upper() + summary[1:] + "." if summary else None)
        example = EXAMPLES.get(" ".join(where))
        if example and not child.epilog:
            child.epilog = f"example:\n  {example}"
        _document(child, where)


def _help(parser: argparse.ArgumentParser, topic: list[str]) -> int:
    target = parser
    for word in " ".join(topic).split():
        commands = _subcommands(target)
        if word not in commands:
            raise AthanorError(f"no command {' '.join(topic)!r}; commands: {', '.join(_subcommands(target))}")
        target = commands[word][0]
    target.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    began = time.monotonic()  # for "you waited": Ray, the agents and the heavy imports all come after
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # without building every command's parser
        print(f"athanor {_version()}")
        return 0
    words = " ".join(argv[:3]).split()
    parser = build_parser(benchmarks=words[:1] == ["bench"] or words[:2] == ["help", "bench"])
    args = parser.parse_args(argv)
    args.began = began
    if args.command is None:  # bare `athanor`: the overview, as `athanor help` gives it
        parser.print_help()
        return 0
    if args.command == "run" and args.out is None and not args.resume:
        from athanor.spec import load_campaign

        try:
            name = load_campaign(args.config).campaign
            args.out = str(Path("runs") / name / time.strftime("%Y%m%d-%H%M%S"))
        except AthanorError as exc:
            print(f"athanor: error: {exc}", file=sys.stderr)
            return 2
    if args.command == "run" and args.out is None:
        print("athanor: error: --resume needs --out DIR, the folder of the campaign to continue", file=sys.stderr)
        return 2
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader who closed the pipe is met below, not at exit
        return code
    except BrokenPipeError:  # `athanor schema | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a program killed by SIGPIPE
    except AthanorError as exc:
        print(f"athanor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("athanor: interrupted; the store keeps everything measured (resume with --resume)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- a bug: one line on screen, the traceback in a file
        where = _error_log(args, traceback.format_exc())
        print(f"athanor: internal error: {type(exc).__name__}: {exc} ({where})", file=sys.stderr)
        return 1


def _error_log(args: argparse.Namespace, text: str) -> str:
    """Keep a traceback where the user will look for it: the run folder the command was about, else the
    user's cache ($XDG_CACHE_HOME/athanor); never the working directory. Says where it went."""
    folders = [Path(p) for p in (getattr(args, "out", None), getattr(args, "dir", None)) if isinstance(p, str)]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "athanor"
    for folder in [f for f in folders if f.is_dir()] + [cache]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            log = folder / "athanor-error.log"
            with log.open("a") as sink:
                sink.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} athanor {' '.join(sys.argv[1:])}\n{text}")
            return f"traceback in {log}"
        except OSError:
            continue
    sys.stderr.write(text)
    return "traceback above: no folder could take it"


if __name__ == "__main__":
    sys.exit(main())
