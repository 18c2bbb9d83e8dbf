"""What a new user meets first: the overview, help that documents everything with an example, a demo
whose report shows the loop learned, README examples that run in order, and quiet, located failures."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest

from athanor import cli
from athanor.cli import build_parser, main
from athanor.objectives import expected_best_of_random
from athanor.report import format_summary, references
from athanor.spec import Objective, load_campaign
from conftest import ROOT


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command and subcommand: (its words, its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from commands(child, (*path, name))


def test_bare_athanor_and_help_print_the_overview_and_exit_0(capsys):
    assert main([]) == 0
    bare = capsys.readouterr().out
    assert main(["help"]) == 0
    assert capsys.readouterr().out == bare
    assert "first steps:" in bare and "athanor run configs/demo.yaml" in bare
    assert all(f"\n    {name}" in bare for name in ("run", "status", "dry-run", "export", "help"))
    assert main(["help", "lab", "serve"]) == 0
    assert "example:\n  athanor lab serve" in capsys.readouterr().out
    assert main(["help", "launch"]) == 2
    assert "no command 'launch'; commands: run, validate" in capsys.readouterr().err


def test_version_is_the_installed_one(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"athanor {version('athanor')}\n"
    with pytest.raises(SystemExit) as done:  # argparse's own, where --version comes with other words
        main(["--version", "--help"])
    assert done.value.code == 0 and capsys.readouterr().out == f"athanor {version('athanor')}\n"


def test_every_argument_is_documented_and_every_command_ends_with_an_example():
    parser = build_parser(benchmarks=True)
    found = list(commands(parser))
    assert len(found) > 30  # bench suites and lab/users subcommands included
    undocumented = [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in found for a in p._actions
                    if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert undocumented == []
    without = [" ".join(path) for path, p in found if not (p.epilog or "").startswith("example:\n  athanor ")]
    assert without == []
    for path, p in found:  # each example names its own command, and parses
        example = shlex.split(p.epilog.split("\n  ", 1)[1])
        assert example[1:1 + len(path)] == list(path), path
        if "help" not in path:
            build_parser(benchmarks=True).parse_args(example[1:example.index(">")] if ">" in example else example[1:])


def test_world_eval_lists_the_worlds_and_refuses_settings_it_does_not_read(capsys):
    with pytest.raises(SystemExit):
        main(["world", "eval", "--help"])
    assert "{alloy,perovskite,replay,solid_state}" in capsys.readouterr().out
    assert main(["world", "eval", "alloy", "--composition", "Fe0.7Co0.3", "--set", "bogus=1"]) == 2
    assert "--set bogus: world 'alloy' reads no such setting; its settings: structure, model" in capsys.readouterr().err
    assert main(["world", "eval", "alloy", "--composition", "Fe0.7Co0.3", "--set", "structure=bcc"]) == 0
    assert '"structure": "bcc"' in capsys.readouterr().out


def test_a_closed_pipe_exits_quietly_and_leaves_no_file(tmp_path):
    child = subprocess.Popen([sys.executable, "-m", "athanor", "schema"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=tmp_path)
    child.stdout.close()  # the reader is gone before the first line (as `| head -0` would be)
    assert child.wait(timeout=60) == 141
    assert child.stderr.read() == b""
    assert list(tmp_path.iterdir()) == []


def test_an_internal_error_is_logged_in_the_run_folder_or_the_cache_never_the_working_folder(
        tmp_path, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "_schema", broken)
    assert main(["schema"]) == 1
    log = tmp_path / "cache" / "athanor" / "athanor-error.log"
    assert f"internal error: RuntimeError: a bug (traceback in {log})" in capsys.readouterr().err
    assert "RuntimeError: a bug" in log.read_text() and not (tmp_path / "athanor-error.log").exists()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(cli, "_status", broken)
    assert main(["status", str(run_dir)]) == 1
    assert (run_dir / "athanor-error.log").is_file()
    (tmp_path / "cache").rename(tmp_path / "gone")
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    assert main(["schema"]) == 1
    err = capsys.readouterr().err
    assert "traceback above: no folder could take it" in err and "RuntimeError: a bug" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "gone", "run"]


def test_random_samplings_expected_best_is_exact():
    rng = np.random.default_rng(0)
    values = rng.normal(size=9)
    for direction, best in (("maximize", max), ("minimize", min)):
        objective = Objective(name="y", direction=direction)
        for k in (1, 2, 4, 9):
            brute = np.mean([best(c) for c in itertools.combinations(values, k)])  # every k-subset, equally likely
            assert expected_best_of_random(values, objective, [k])[0] == pytest.approx(brute, rel=1e-12)


def test_the_demo_is_a_learning_bayesian_campaign_and_its_report_says_against_what():
    spec = load_campaign(ROOT / "configs" / "demo.yaml")
    assert spec.designer.strategy == "bayesian" and spec.space.pool is not None
    ref = references(spec, 30)["toughness"]
    assert ref["pool_rows"] == 600 and ref["pool_best"] == pytest.approx(46.7114, abs=1e-4)
    assert 30 < ref["random_expected_best"] < ref["pool_best"]
    summary = {"campaign": "demo", "status": "completed", "n_experiments": 30, "budget": 30, "n_measured": 30,
               "n_failed": 0, "n_rejected": 0, "wall_s": 6.5, "overhead_per_experiment_s": 0.2,
               "best": {"sample_id": "S0024", "inputs": {"n": 12}, "objectives": {"toughness": 44.9}},
               "reference": {"toughness": ref}}
    table = format_summary(summary, waited_s=26.1, startup_s=17.6)
    assert re.search(r"wall time +6\.5 s \(you waited 26\.1 s, 17\.6 s of it starting Ray and the agents\)", table)
    assert re.search(r"toughness: best of the 600 rows +46\.7114", table)
    assert re.search(r"toughness: random sampling, expected +3\d\.\d+ after 30", table)


def readme_commands() -> list[list[str]]:
    """Every `athanor ...` line of the README's shell blocks, as words (comments, `&` and `\\` joins removed)."""
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].split("  #")[0].strip().rstrip("&").strip()
            for part in line.split("; "):
                if part.startswith("athanor "):
                    lines.append(shlex.split(part))
    return lines


def test_readme_examples_parse_run_in_folders_of_their_own_and_name_files_that_exist():
    found = readme_commands()
    assert len(found) > 25
    for words in found:
        build_parser(benchmarks=True).parse_args(words[1:])  # an unknown flag or command exits here
    fresh = [w[w.index("--out") + 1] for w in found if w[1] == "run" and "--out" in w and "--resume" not in w]
    assert len(fresh) == len(set(fresh)), sorted(fresh)  # following the README in order never reuses a folder
    made: set[str] = set()  # a command reads a run folder only after an earlier example made it
    for words in found:
        if words[1] == "run" and "--out" in words:
            made.add(words[words.index("--out") + 1])
        elif words[1] in ("status", "approve", "reject", "edit", "pause", "unpause", "batch-size", "chat",
                          "withdraw", "restore", "export"):
            assert words[2] in made, f"{' '.join(words)}: no earlier example makes {words[2]}"
    configs = {w for words in found for w in words if w.startswith("configs/") and w.endswith(".yaml")}
    for config in configs:
        assert (ROOT / config).is_file(), config
    head = (ROOT / "README.md").read_text().split("\n")[:6]
    assert head[3].startswith("pip install torch==2.13.0 -e . && athanor run configs/demo.yaml")


def test_the_chat_help_says_what_an_edit_and_unpause_do():
    from athanor.chat_grammar import parse
    from athanor.chat_model import HELP

    edit = HELP[HELP.index("edit 3"):HELP.index("pause |")]
    assert "waits for approval again" in edit and "it is not approved" in edit
    assert "resume" not in HELP  # `--resume` continues a stopped run; a paused one is unpaused
    assert [c["name"] for c in parse("unpause").calls] == [c["name"] for c in parse("resume").calls]


@pytest.mark.slow
def test_the_demo_runs_says_what_it_waits_for_and_beats_random_sampling(tmp_path, ray_address, capsys):
    import json

    out = tmp_path / "demo"
    assert main(["run", str(ROOT / "configs" / "demo.yaml"), "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "athanor: starting Ray and the campaign's agents" in said.err  # said before the wait, not after
    assert re.search(r"wall time +\d+\.\d s \(you waited \d+\.\d s, \d+\.\d s of it starting Ray and the agents\)",
                     said.out), said.out
    summary = json.loads((out / "summary.json").read_text())
    ref = summary["reference"]["toughness"]
    assert summary["designer"] == "bayesian" and summary["n_measured"] == 30
    # the loop learned: its best beats what random sampling of 30 rows would be expected to find
    assert summary["best"]["objectives"]["toughness"] > ref["random_expected_best"]
    assert (out / "plots" / "progress.png").stat().st_size > 10_000
