"""The decision statistics against known binomial cases and brute-force enumeration."""
import math
import random

import pytest

from gymops.lifecycle.statistics import (Estimate, Sprt, clopper_pearson, gate_sample_size, paired_comparison,
                                         pass_probability)


def test_clopper_pearson_known_cases():
    # k = 0 and k = n have closed forms: 1 - (a/2)^(1/n) and (a/2)^(1/n)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** 0.1, abs=1e-9)
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** 0.1, abs=1e-9)
    low, high = clopper_pearson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.1871, 0.8129)  # the textbook interval
    assert clopper_pearson(0, 0) == (0.0, 1.0)  # no data: nothing known
    e = Estimate(121, 134)
    assert e.value == pytest.approx(121 / 134) and e.interval[0] < e.value < e.interval[1]
    with pytest.raises(ValueError):
        Estimate(5, 3)


def test_pass_probability_is_the_binomial_tail():
    # P(X >= 2) for X ~ Bin(3, 0.5) = 4/8
    assert pass_probability(0.5, 3, 2) == pytest.approx(0.5)
    assert pass_probability(0.9, 10, 0) == pytest.approx(1.0)


def brute_force_size(threshold, margin, power, alpha):
    for n in range(1, 400):
        for k in range(n + 1):
            hi = sum(math.comb(n, j) * (threshold + margin) ** j * (1 - threshold - margin) ** (n - j) for j in range(k, n + 1))
            lo = sum(math.comb(n, j) * (threshold - margin) ** j * (1 - threshold + margin) ** (n - j) for j in range(k, n + 1))
            if hi >= power and lo <= alpha:
                return n, k
    return None


@pytest.mark.parametrize("threshold, margin, power, alpha", [(0.90, 0.05, 0.99, 0.05), (0.88, 0.05, 0.99, 0.05),
                                                             (0.90, 0.10, 0.95, 0.05)])
def test_gate_sample_size_is_the_smallest_that_separates(threshold, margin, power, alpha):
    size = gate_sample_size(threshold, margin, power, alpha)
    assert (size.n, size.pass_mark) == brute_force_size(threshold, margin, power, alpha)
    assert size.pass_if_above >= power and size.pass_if_below <= alpha


def test_paired_comparison_mcnemar_exact():
    # 10 discordant photos all won by the challenger: p = 0.5 ** 10
    challenger = [True] * 90 + [True] * 10
    champion = [True] * 90 + [False] * 10
    r = paired_comparison(challenger, champion)
    assert (r.n, r.challenger_only, r.champion_only) == (100, 10, 0)
    assert r.p_better == pytest.approx(0.5 ** 10)
    assert r.difference == pytest.approx(0.10) and 0 < r.ci_low < 0.10 <= r.ci_high
    # ties on the discordant photos: no evidence either way, the interval straddles 0
    tie = paired_comparison([True, False] * 20, [False, True] * 20)
    assert tie.p_better > 0.5 and tie.ci_low < 0 < tie.ci_high and tie.difference == 0
    # 1 of 10 discordant photos for the challenger: P(X >= 1 | Bin(10, 1/2))
    worse = paired_comparison([True] + [False] * 9, [False] + [True] * 9)
    assert worse.p_better == pytest.approx(1 - 0.5 ** 10)
    assert worse.ci_high < 0  # clearly worse
    # identical answers: difference exactly 0, interval degenerate at 0
    same = paired_comparison([True, False, True], [True, False, True])
    assert (same.difference, same.ci_low, same.ci_high, same.p_better) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="different photos"):
        paired_comparison([True], [True, False])


def test_sprt_steps_and_bounds():
    s = Sprt(0.03, 0.20, 0.05, 0.05)
    assert math.log(0.20 / 0.03) == pytest.approx(1.897, abs=1e-3)
    assert math.log(0.80 / 0.97) == pytest.approx(-0.193, abs=1e-3)
    lower, upper = s.bounds
    assert upper == pytest.approx(math.log(19)) and lower == pytest.approx(-math.log(19))
    assert s.run([True, True]).decision == "reject"  # 3.79 > 2.94
    assert s.run([True]).decision == "continue"
    ok = s.run([False] * 100)
    assert ok.decision == "accept" and ok.verdicts == math.ceil(math.log(19) / -math.log(0.80 / 0.97))
    assert s.run([]).decision == "continue"  # no data is no verdict


def test_sprt_error_rates_hold_by_simulation():
    s = Sprt(0.03, 0.20, 0.05, 0.05)
    rng = random.Random(7)

    def trial(p):
        return s.run(rng.random() < p for _ in range(1000))

    good = [trial(0.03) for _ in range(2000)]
    bad = [trial(0.20) for _ in range(2000)]
    # Wald's bounds: actual error rates <= alpha / (1 - beta) and beta / (1 - alpha); plus three
    # standard errors of a 2000-trial simulation
    slack = 3 * math.sqrt(0.05 * 0.95 / 2000)
    assert sum(r.decision == "reject" for r in good) / len(good) <= 0.05 / 0.95 + slack
    assert sum(r.decision == "accept" for r in bad) / len(bad) <= 0.05 / 0.95 + slack
    mean_bad = sum(r.verdicts for r in bad) / len(bad)
    assert mean_bad < 40  # decides on tens of verdicts, not a fixed window
