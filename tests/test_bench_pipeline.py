"""bench/pipeline's gate-pass probability: exact binomial sums, checked against a simulation."""
import numpy as np
import pytest

from bench.pipeline import gate_pass_probability
from gymops.lifecycle.gates import GateSettings, pass_mark

VAL = {"good": 27, "defective": 11}
HOLDOUT = {"good": 20, "defective": 20}


def simulated(good: float, defective: float, draws: int = 40_000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t = GateSettings()
    vg, vd = rng.binomial(VAL["good"], good, draws), rng.binomial(VAL["defective"], defective, draws)
    hg, hd = rng.binomial(HOLDOUT["good"], good, draws), rng.binomial(HOLDOUT["defective"], defective, draws)
    eps = 1e-9
    # validation by its estimate; the holdout by the gate's pass marks (20 photos of a class: all 20;
    # 40 photos at 0.88: 38, since a 0.83 model gets 37 with probability > 0.05)
    ok = ((vg + vd) / 38 >= t.val_accuracy - eps) & (hg + hd >= pass_mark(40, t.holdout_accuracy, 0.05, 0.05)) \
        & (hg >= pass_mark(20, t.class_accuracy, 0.05, 0.05)) & (hd >= pass_mark(20, t.class_accuracy, 0.05, 0.05))
    return float(ok.mean())


@pytest.mark.parametrize("good,defective", [(0.97, 0.96), (0.99, 0.93), (0.92, 0.92)])
def test_matches_a_simulation_of_the_gates(good, defective):
    assert gate_pass_probability(good, defective, VAL, HOLDOUT) == pytest.approx(simulated(good, defective), abs=0.01)


def test_bounds_and_monotonic():
    assert gate_pass_probability(1.0, 1.0, VAL, HOLDOUT) == pytest.approx(1.0)
    assert gate_pass_probability(0.5, 0.5, VAL, HOLDOUT) < 1e-6
    ps = [gate_pass_probability(a, a, VAL, HOLDOUT) for a in (0.90, 0.94, 0.97, 0.99)]
    assert ps == sorted(ps) and ps[0] < 0.5 < ps[-1]
    # A model exactly at the 0.90 class gate passes a 20-photo class only if it gets all 20 right
    # (0.9**20 = 0.12): 20 photos cannot tell 0.90 from 0.85; validation (8 defective at 0.9, at
    # most 3 wrong) passes with 0.995.
    assert pass_mark(20, 0.90, 0.05, 0.05) == 20 and pass_mark(40, 0.88, 0.05, 0.05) == 38
    p_val = sum(__import__("math").comb(8, e) * 0.1 ** e * 0.9 ** (8 - e) for e in range(4))
    assert gate_pass_probability(1.0, 0.90, {"good": 30, "defective": 8}, HOLDOUT) == pytest.approx(0.9 ** 20 * p_val, abs=1e-6)


def test_uses_the_thresholds_given():
    strict, lax = GateSettings(class_accuracy=0.99), GateSettings(class_accuracy=0.5, val_accuracy=0.5, holdout_accuracy=0.5)
    base = gate_pass_probability(0.95, 0.95, VAL, HOLDOUT)
    assert gate_pass_probability(0.95, 0.95, VAL, HOLDOUT, strict) < base < gate_pass_probability(0.95, 0.95, VAL, HOLDOUT, lax)
