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
                    "models list", "models show",
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


def test_models_list_and_show_read_a_registry(tmp_path, capsys):
    """`gymops models list|show` against a real (temporary) registry, settings given explicitly."""
    from gymops.db import engine_for
    from gymops.lifecycle.registry import ModelRegistry
    from gymops.settings import Settings

    settings = Settings(profile="embedded", home=tmp_path / "home")
    registry = ModelRegistry(engine_for(settings))
    parser = build_parser()

    def run(*argv: str) -> tuple[int, str, str]:
        args = parser.parse_args(list(argv))
        code = args.handler(settings, args)
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("models", "list") == (0, "laundry: no model versions registered (that are not archived)\n", "")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"weights")
    holdout = {"accuracy": 0.927, "per_class_accuracy": {"good": 0.933, "defective": 0.92}}
    v1 = registry.register_candidate("laundry", "efficientnet_lite0", {"val": {"accuracy": 0.95}, "holdout": holdout},
                                     "DS-2026-11-01", "run-abc", str(model))
    registry.activate("laundry", v1.version)
    v2 = registry.register_candidate("laundry", "efficientnet_lite0", {}, "DS-2", "run-def", "s3://m/2.onnx",
                                     parent_version=v1.version)
    registry.reject("laundry", v2.version, [{"gate": "accuracy", "check": "holdout", "message": "too low"}])
    for _ in range(10):  # enough newer versions for 1.1.0 (rejected) to be archived
        registry.register_candidate("laundry", "efficientnet_lite0", {}, "DS-x", "run-x", "s3://m/x.onnx")
    for mv in registry.history("laundry", limit=100)[:10]:
        registry.set_status("laundry", mv.version, "rejected")
    assert registry.archive_beyond("laundry", keep=10) == ["1.1.0"]

    code, out, _ = run("models", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["VERSION", "TRITON", "STATUS", "VAL", "HOLDOUT", "GOOD", "DEFECTIVE",
                                               "DATASET", "RUN", "PARENT", "TRAINED", "DEPLOYED"]
    first = next(line for line in lines if line.startswith("1.0.0 "))
    assert first.split()[:10] == ["1.0.0", "1", "active", "0.950", "0.927", "0.933", "0.920", "DS-2026-11-01",
                                  "run-abc", "-"]
    assert not any(line.startswith("1.1.0 ") for line in lines) and len(lines) == 1 + 11
    code, out, _ = run("models", "list", "--all", "--model-type", "laundry")
    archived = next(line for line in out.splitlines() if line.startswith("1.1.0 "))
    assert archived.split()[2] == "archived" and "1.0.0" in archived.split()  # its parent
    assert run("models", "list", "--model-type", "face")[1].startswith("face: no model versions")

    code, out, _ = run("models", "show", "1.0.0")
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "active" and shown["metrics"]["holdout"] == holdout
    assert (shown["dataset_id"], shown["run_id"], shown["parent_version"]) == ("DS-2026-11-01", "run-abc", None)
    assert shown["artifact_sha256"] and shown["deployed_at"].startswith(shown["trained_at"][:4])
    shown = json.loads(run("models", "show", "1.1.0", "--model-type", "laundry")[1])
    assert (shown["status"], shown["parent_version"], shown["artifact_sha256"]) == ("archived", "1.0.0", None)
    code, _, err = run("models", "show", "9.9.9")
    assert code == 1 and "9.9.9 is not in the registry" in err
