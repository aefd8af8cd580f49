"""How often the accuracy gate deploys a challenger, by simulation of the gate's own code: the
error rates the README's decision rule is argued with.

Per photo, champion and challenger are right or wrong with given error rates, a share of their
errors on the same photos (two models trained on overlapping data miss the same hard photos);
the holdout has ``--photos`` photos per class and ``--newest`` of them were set aside since the
champion was trained. Each scenario runs ``--trials`` times through
``gymops.lifecycle.gates.accuracy_gate`` (thresholds and the paired champion comparison), so the
figures are the rule's, not a formula's. Seconds on one core.

    python -m bench.decision                # -> bench/results/decision.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# (name, champion error, challenger error, champion error on the newest photos, challenger's there)
SCENARIOS = [
    ("challenger 0.05 worse", 0.033, 0.083, 0.033, 0.083),
    ("challenger 0.03 worse", 0.033, 0.063, 0.033, 0.063),
    ("challenger 0.02 worse", 0.033, 0.053, 0.033, 0.053),
    ("challenger 0.01 worse", 0.033, 0.043, 0.033, 0.043),
    ("equal (a routine retrain)", 0.033, 0.033, 0.033, 0.033),
    ("challenger 0.01 better", 0.033, 0.023, 0.033, 0.023),
    ("new kinds: champion misses 12% of the newest, challenger 4%", 0.033, 0.033, 0.12, 0.04),
    ("new kinds learnt, old ones 0.03 forgotten", 0.033, 0.063, 0.12, 0.06),
    ("the newest forgotten: challenger misses 12% of them, champion 4%", 0.033, 0.033, 0.04, 0.12),
]


def answers(rng, n: int, err_champion: float, err_challenger: float, shared: float):
    """Per-photo right/wrong of both models: a share ``shared`` of the smaller error rate falls on
    photos both get wrong, the rest independently."""
    both = shared * min(err_champion, err_challenger)
    u = rng.random(n)
    both_wrong = u < both
    champion_wrong = both_wrong | ((u >= both) & (u < err_champion))
    # the challenger's other errors fall on photos the champion gets right
    own = (err_challenger - both) / max(1 - err_champion, 1e-9)
    challenger_wrong = both_wrong | (~champion_wrong & (rng.random(n) < own))
    return ~challenger_wrong, ~champion_wrong


def deploy_rate(scenario, photos: int, newest: int, trials: int, shared: float, seed: int, gates) -> dict:
    from gymops.lifecycle.gates import accuracy_gate, compare_with_champion

    _, e_c, e_x, e_cn, e_xn = scenario
    rng = np.random.default_rng(seed)
    n = 2 * photos
    deployed = champion_ok = 0
    for _ in range(trials):
        old_x, old_c = answers(rng, n - newest, e_c, e_x, shared)
        new_x, new_c = answers(rng, newest, e_cn, e_xn, shared)
        x, c = np.concatenate([old_x, new_x]), np.concatenate([old_c, new_c])
        mask = [False] * (n - newest) + [True] * newest
        cmp = compare_with_champion("1.0.0", 2, x, c, mask)
        # thresholds read on the same photos, half of them each class
        good_right, defective_right = int(x[::2].sum()), int(x[1::2].sum())
        g, d = len(x[::2]), len(x[1::2])
        metrics = {"confusion": [[good_right, g - good_right], [d - defective_right, defective_right]]}
        val = {"confusion": [[60, 0], [0, 40]]}
        result = accuracy_gate({"val": val, "holdout": metrics}, cmp, gates)
        deployed += result.passed
        champion_ok += not any(f.check.startswith("better_than_champion") for f in result.failures)
    return {"scenario": scenario[0], "deployed": round(deployed / trials, 3),
            "passes_champion_comparison": round(champion_ok / trials, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=150, help="holdout photos per class")
    parser.add_argument("--newest", type=int, default=60, help="of them, set aside since the champion was trained")
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--shared", type=float, default=0.5, help="share of errors on photos both models miss")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/decision.json")
    args = parser.parse_args(argv)

    from gymops.settings import GateSettings

    gates = GateSettings()
    rows = [deploy_rate(s, args.photos, args.newest, args.trials, args.shared, args.seed + i, gates)
            for i, s in enumerate(SCENARIOS)]
    out = {"benchmark": "decision", "command": "python -m bench.decision " + " ".join(argv or sys.argv[1:]),
           "holdout_photos_per_class": args.photos, "newest_photos": args.newest, "trials": args.trials,
           "shared_error_share": args.shared, "noninferiority_margin": gates.noninferiority_margin,
           "scenarios": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(f"{r['scenario']:62} deployed {r['deployed']:.3f}  (champion comparison {r['passes_champion_comparison']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
