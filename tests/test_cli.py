"""The one command line: every command the README shows answers --help (with the options the README
gives it), the README's simulator example works as written, and a bad setting exits 2 naming it."""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gymops.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
WORD = re.compile(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*")


def _readme_commands() -> dict[tuple[str, ...], set[str]]:
    """Each command path the README shows in `gymops ...` code spans (a|b|c expanded), with the
    --options shown with it."""
    commands: dict[tuple[str, ...], set[str]] = {}
    for snippet in re.findall(r"`(gymops [^`]+)`", README):
        tokens = snippet.replace("\\|", "|").split()[1:]
        words = list(itertools.takewhile(WORD.fullmatch, tokens))
        options = {t.split("=")[0].strip("[]") for t in tokens if t.lstrip("[").startswith("--")}
        for path in itertools.product(*(w.split("|") for w in words)) if words else ():
            commands.setdefault(path, set()).update(options)
    return commands


README_COMMANDS = _readme_commands()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GYMOPS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, **extra}


def _gymops(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gymops", *args], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def test_the_readme_shows_the_operator_commands():
    shown = {" ".join(path) for path in README_COMMANDS}
    for command in ("setup", "ingest file", "ingest send", "ingest consume", "ingest serve", "deadletters list",
                    "deadletters replay", "history", "simulate", "demo", "models rollback", "models reconcile",
                    "serving start", "serving stop", "serving status", "serving setup", "s3 start", "s3 stop"):
        assert command in shown, f"README shows no `gymops {command}`"


@pytest.mark.parametrize("path", sorted(README_COMMANDS), ids=" ".join)
def test_readme_command_help(path):
    out = _gymops(*path, "--help")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"usage: gymops {' '.join(path)}" in out.stdout
    for option in README_COMMANDS[path]:
        assert option in out.stdout, f"`gymops {' '.join(path)}` has no {option}"


def test_top_level_help_lists_every_group():
    out = _gymops("--help")
    assert out.returncode == 0, out.stderr
    for group in {path[0] for path in README_COMMANDS}:
        assert group in out.stdout


def _leaves(parser, path=()):
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    if not actions:
        yield path, parser
        return
    for name, sub in actions[0].choices.items():
        yield from _leaves(sub, (*path, name))


def test_every_command_has_a_handler():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) >= 20
    for path, parser in leaves:
        assert callable(parser.get_default("handler")), f"gymops {' '.join(path)} has no handler"


@pytest.mark.parametrize("args", [("-v", "ingest", "serve"), ("-v", "ingest", "consume")])
def test_arguments_of_the_background_processes_parse(args):
    # gymops.processes.start runs `python -m gymops -v <args>` for the demo, the benches and the tests
    assert callable(build_parser().parse_args(list(args)).handler)


def test_readme_simulate_example_as_written(tmp_path):
    example = next(s for s in re.findall(r"`(gymops simulate [^`]+)`", README))
    values = {"N": "6", "M": "2", "K": "3", "S": "5", "events.jsonl": str(tmp_path / "events.jsonl")}
    args = [values.get(token, token) for token in example.split()[1:]]
    assert args[0] == "simulate" and str(tmp_path / "events.jsonl") in args, example
    home = tmp_path / "home"
    out = _gymops(*args, env=_env(GYMOPS_PROFILE="embedded", GYMOPS_HOME=str(home)), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    kinds = {kind: sum(e["eventType"] == kind for e in events) for kind in
             ("TaskConfirmedEvent", "UserCreatedEvent", "FaceAuthenticatedEvent")}
    assert kinds["TaskConfirmedEvent"] == 6
    assert kinds["FaceAuthenticatedEvent"] == 3
    assert kinds["UserCreatedEvent"] == 2 + 2 * 3  # members + helpers (2 per branch, 3 branches)
    assert len(events) == sum(kinds.values())
    urls = [e.get("photoUrl") or e.get("facePhotoUrl") for e in events]
    assert all(urls)
    for url in urls:
        parts = urlsplit(url)
        assert parts.scheme == "file"
        photo = Path(parts.path)
        assert photo.is_file() and photo.stat().st_size > 0, url
        assert home.resolve() in photo.resolve().parents
    assert "TaskConfirmedEvent=6" in out.stdout


def test_a_bad_setting_exits_2_and_names_the_variable():
    out = _gymops("history", env=_env(GYMOPS_BATCH_SIZE="abc"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "GYMOPS_BATCH_SIZE" in out.stderr and "Traceback" not in out.stderr
    assert _gymops("history", "--help", env=_env(GYMOPS_BATCH_SIZE="abc")).returncode == 0  # help needs no settings
