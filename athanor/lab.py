"""A lab file: the instruments a lab shares among its campaigns, where each runs, and how they are shared.

    lab: demo                      # its Ray namespace is athanor-lab-demo
    scheduler: fair_share          # or priority (campaign files set lab_priority)
    instruments:
      - {name: furnace_a, role: synthesis, node_resource: furnace_host, on_interrupted: retry}
      - {name: xrd_a, role: characterization}

An instrument is what a campaign file's `instruments` entry is, plus `node_resource`: a Ray custom
resource that only the computer owning the instrument's controller offers
(`ray start ... --resources '{"furnace_host": 1}'`); its actor runs on that node and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from athanor.errors import AthanorError, SpecError
from athanor.spec import InstrumentSpec, _Strict, read_text, read_yaml, validation_problems

NAMESPACE_PREFIX = "athanor-lab-"
SCHEDULER = "scheduler"


class LabInstrumentSpec(InstrumentSpec):
    node_resource: str | None = Field(default=None, max_length=60, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$",
                                      description="a Ray custom resource only its node offers: the actor runs there")

    def for_campaign(self) -> InstrumentSpec:
        return InstrumentSpec.model_validate(self.model_dump(exclude={"node_resource"}))


class Lab(_Strict):
    lab: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    scheduler: Literal["fair_share", "priority"] = "fair_share"
    queue_depth: int = Field(default=2, ge=1, le=8, description="steps an instrument holds at once: the one it "
                             "runs and those that start the moment it ends (more hides a slower turnaround)")
    instruments: list[LabInstrumentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Lab:
        names = [i.name for i in self.instruments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"instrument names must be unique: {', '.join(twice)} named twice")
        missing = {"synthesis", "characterization"} - {i.role for i in self.instruments}
        if missing:
            raise ValueError(f"a lab needs a synthesis and a characterization instrument; it has no "
                             f"{' and no '.join(sorted(missing))} instrument")
        return self

    @property
    def namespace(self) -> str:
        return namespace(self.lab)

    def instrument_named(self, name: str) -> LabInstrumentSpec:
        return next(i for i in self.instruments if i.name == name)


def namespace(lab: str) -> str:
    return NAMESPACE_PREFIX + lab


def actor_name(instrument: str) -> str:
    return f"instrument:{instrument}"


def is_lab_file(path: str | Path) -> bool:
    """A lab file (its top level names `lab` and no `campaign`), as opposed to a campaign file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "lab" in data and "campaign" not in data


def load_lab(path: str | Path) -> Lab:
    path = Path(path)
    data, root = read_yaml(read_text(path, "lab"), str(path), "lab")
    try:
        return Lab.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(path), validation_problems(exc, root, str(path))) from None


# --- the `athanor lab` command ---------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    lab = sub.add_parser("lab", help="a lab's instruments shared by campaigns across a Ray cluster")
    commands = lab.add_subparsers(dest="lab_command", required=True)
    serve = commands.add_parser("serve", help="host a lab's instruments and scheduler until interrupted")
    serve.add_argument("lab_file", metavar="LAB.yaml", help="the lab file: its instruments and scheduler")
    serve.add_argument("--ray-address", help="join this cluster (default: start a local one and print its address)")
    serve.add_argument("--json", action="store_true", help="print the lab's status as JSON once it is up")
    serve.set_defaults(func=_serve)
    status = commands.add_parser("status", help="every instrument: busy with what, queue, utilization, service")
    status.add_argument("lab", nargs="?", help="the lab's name (default: every lab on the cluster)")
    status.add_argument("--ray-address", help="the cluster (default: $RAY_ADDRESS)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)
    restore = commands.add_parser("restore", help="put a quarantined instrument back in service for every campaign")
    restore.add_argument("lab", help="the lab's name")
    restore.add_argument("instrument", help="the instrument to put back in service")
    restore.add_argument("--ray-address", help="the cluster (default: $RAY_ADDRESS)")
    restore.set_defaults(func=_restore)


def _connect(address: str | None, command: str) -> None:
    import os

    from athanor.runtime import connect

    if not (address or os.environ.get("RAY_ADDRESS")):
        raise AthanorError(f"`athanor lab {command}` needs --ray-address, the address of the lab's Ray cluster")
    connect(address)


def _serve(args: Any) -> int:
    import json

    import ray

    from athanor import labservice
    from athanor.runtime import connect

    lab = load_lab(args.lab_file)
    started = connect(args.ray_address)

    def ready(report: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(report, indent=1), flush=True)
            return
        address = ray.get_runtime_context().gcs_address
        print(f"lab {lab.lab!r} served on the Ray cluster at {address} (namespace {lab.namespace}, "
              f"scheduler: {lab.scheduler}); Ctrl-C takes it down", flush=True)
        for i in report["instruments"]:
            print(f"  {i['name']:<16} {i['role']:<17} node {i['node_id'][:12]}", flush=True)

    try:
        labservice.serve(lab, ready)
    finally:
        if started:
            ray.shutdown()
    return 0


def _status(args: Any) -> int:
    import json

    from athanor import labservice

    _connect(args.ray_address, "status")
    report = labservice.status(args.lab)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    if not report["labs"]:
        print("no lab is served on this cluster")
    for lab in report["labs"]:
        print(f"lab {lab['lab']} ({lab['policy']}), {len(lab['campaigns'])} campaign(s): "
              + ", ".join(c["campaign_id"] for c in lab["campaigns"]))
    for i in report["instruments"]:
        busy = i["busy_with"]
        doing = f"{busy['campaign']} {busy['sample']} {busy['step']}" if busy else "idle"
        service = f"QUARANTINED: {i['quarantine_reason']}" if i["quarantined"] else "in service"
        use = "-" if i["utilization"] is None else f"{i['utilization']:.0%}"
        print(f"  {i['lab']}/{i['name']:<14} {i['role']:<17} node {str(i['node_id'])[:12]:<12} {doing:<40} "
              f"queue {len(i['queue'])} utilization {use} {service}")
    return 0


def _restore(args: Any) -> int:
    import ray

    from athanor import labservice

    _connect(args.ray_address, "restore")
    if not ray.get(labservice.scheduler_of(args.lab).restore.remote(args.instrument)):
        raise AthanorError(f"lab {args.lab!r} has no instrument {args.instrument!r}")
    print(f"{args.instrument} is back in service in lab {args.lab}")
    return 0
