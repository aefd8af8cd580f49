"""How often `make demo` deploys its retrained challenger under live traffic (issue 13, item 6):
the demo's loop headless, once per seed, each in a fresh GYMOPS_HOME (its own history, registry,
holdout, Dagster instance and Triton state), counting the runs whose retrained model became active. The face act (after the laundry loop, its
own models) is left out unless --face: it does not touch what is counted, and costs ~1.5 min a seed.

    python -m bench.demo_swaps --seeds 1,2,3,4,5,6,7,8,9,10   # -> bench/results/demo_swaps.json
                                                             # ~5-6 min per seed on 2 cores: run it alone
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument("--face", action="store_true", help="keep the demo's face act")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "demo_swaps.json"))
    args = parser.parse_args(argv)
    runs: list = []
    for seed in [int(x) for x in args.seeds.split(",") if x.strip()]:
        home = Path(tempfile.mkdtemp(prefix="gymops-demo-swaps-"))
        result = home / "result.json"
        repository = own_repository(home)
        env = {**os.environ, "GYMOPS_HOME": str(home), "GYMOPS_PROFILE": "embedded",  # a child's own home
               "GYMOPS_TRITON_REPOSITORY": str(repository)}
        try:
            command = [sys.executable, "-m", "gymops", "demo", "--seed", str(seed), "--result", str(result)]
            proc = subprocess.run(command + ([] if args.face else ["--no-face"]),
                                  cwd=ROOT, env=env, capture_output=True, text=True)
            outcome = json.loads(result.read_text()) if result.exists() else {
                "seed": seed, "swapped": False, "error": (proc.stdout + proc.stderr)[-2000:]}
        finally:
            shutil.rmtree(home, ignore_errors=True)
        runs.append(outcome)
        why = "" if outcome.get("swapped") else f" ({json.dumps(outcome.get('gates') or outcome.get('error'))[-600:]})"
        print(f"seed {seed}: {'swapped' if outcome.get('swapped') else 'NOT swapped'} in {outcome.get('seconds')} s{why}",
              file=sys.stderr, flush=True)
        summary = write(args.out, runs, args.face)
    if not runs:
        summary = write(args.out, runs, args.face)
    print(json.dumps({k: v for k, v in summary.items() if k != "details"}))
    return 0 if summary["swapped"] == summary["runs"] else 1


def own_repository(home: Path) -> Path:
    """A child's own Triton model repository: the checkout's model configurations without version
    folders, so one seed's versions never meet the next seed's registry."""
    repository = home / "triton_models"
    for model in ("laundry", "face"):
        (repository / model).mkdir(parents=True)
        for name in ("config.pbtxt", "model.py"):
            shutil.copyfile(ROOT / "triton_models" / model / name, repository / model / name)
    return repository


def write(out: str, runs: list, face: bool) -> dict:
    """The summary so far (written after every seed: a long run keeps what it measured)."""
    summary = {"benchmark": "demo_swaps", "face_act": face, "runs": len(runs), "swapped": sum(1 for r in runs if r.get("swapped")),
               "failed_requests": sum(r.get("failed", 0) for r in runs), "details": runs}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(main())
