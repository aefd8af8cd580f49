"""The statistics every automatic decision states: estimates with exact intervals, the sample size
a gate needs, a paired champion-versus-challenger test, and a sequential test on live errors.

Why exact binomial methods: gate samples are tens to a few hundred photos and accuracies sit near
1, where normal approximations (Wald intervals, chi-square McNemar) are badly miscalibrated; the
exact forms cost nothing at these sizes (scipy.stats.binom).

- ``Estimate``: k of n, the proportion and its Clopper-Pearson interval.
- ``gate_sample_size``: the smallest n, with its pass mark, for which a model ``margin`` above a
  threshold passes with probability >= ``power`` and one ``margin`` below with <= ``alpha``
  (the README's sizing rule).
- ``paired_comparison``: champion and challenger judged on the SAME photos; only the discordant
  photos carry information (McNemar). The exact conditional test on them gives a p-value for
  "the challenger is better", and the Clopper-Pearson interval of the discordant split gives an
  interval for the accuracy difference, used for non-inferiority with a margin.
- ``Sprt``: Wald's sequential probability ratio test on a stream of verdicts (error or not), for
  live accuracy and urgent retraining: it decides as soon as the evidence suffices (~20-40 verdicts
  for 3% against 20% errors) instead of waiting for a fixed window.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from scipy.stats import beta as _beta
from scipy.stats import binom as _binom


@dataclass(frozen=True)
class Estimate:
    """k successes of n trials: the proportion with its two-sided exact interval."""
    k: int
    n: int
    confidence: float = 0.95

    def __post_init__(self):
        if self.n < 0 or not 0 <= self.k <= self.n:
            raise ValueError(f"need 0 <= k <= n, got k={self.k}, n={self.n}")

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return clopper_pearson(self.k, self.n, self.confidence)

    def as_dict(self) -> dict:
        low, high = self.interval
        return {"k": self.k, "n": self.n, "estimate": self.value, "ci_low": round(low, 6),
                "ci_high": round(high, 6), "confidence": self.confidence}


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion; (0, 1) when n == 0 (no data)."""
    if n == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(_beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(_beta.ppf(1 - a, k + 1, n - k))
    return low, high


def pass_probability(p: float, n: int, pass_mark: int) -> float:
    """P(at least ``pass_mark`` of ``n`` right) for a model whose true accuracy is ``p``."""
    return float(_binom.sf(pass_mark - 1, n, p))


@dataclass(frozen=True)
class SampleSize:
    n: int
    pass_mark: int  # pass when at least this many of n are right
    pass_if_above: float  # pass probability of a model `margin` above the threshold
    pass_if_below: float  # pass probability of a model `margin` below the threshold


def gate_sample_size(threshold: float, margin: float = 0.05, power: float = 0.99, alpha: float = 0.05,
                     max_n: int = 5000) -> SampleSize:
    """Smallest n with a pass mark k such that accuracy ``threshold + margin`` passes with
    probability >= ``power`` and ``threshold - margin`` with <= ``alpha``. For 0.90 +- 0.05 at
    99%/5% that is 134 photos with a pass mark of 121 (0.903)."""
    hi, lo = min(threshold + margin, 1.0), max(threshold - margin, 0.0)
    for n in range(1, max_n + 1):
        # the pass mark is the smallest k at which the worse model passes rarely enough
        k = int(_binom.isf(alpha, n, lo)) + 1
        while k > 0 and pass_probability(lo, n, k - 1) <= alpha:
            k -= 1
        while pass_probability(lo, n, k) > alpha:
            k += 1
        if k <= n and pass_probability(hi, n, k) >= power:
            return SampleSize(n, k, pass_probability(hi, n, k), pass_probability(lo, n, k))
    raise ValueError(f"no sample size up to {max_n} separates {lo:g} from {hi:g} at {power:g}/{alpha:g}")


@dataclass(frozen=True)
class PairedComparison:
    """Challenger against champion on the same n photos."""
    n: int
    challenger_only: int  # photos only the challenger gets right
    champion_only: int  # photos only the champion gets right
    p_better: float  # exact one-sided p-value of "the challenger is more accurate"
    p_worse: float  # exact one-sided p-value of "the challenger is less accurate"
    difference: float  # challenger accuracy - champion accuracy
    ci_low: float  # exact (conditional) interval of that difference
    ci_high: float
    confidence: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def paired_comparison(challenger_right, champion_right, confidence: float = 0.90) -> PairedComparison:
    """McNemar's exact test on the discordant photos. Given m discordant photos, the number the
    challenger alone gets right is Binomial(m, 1/2) when both models are equally accurate. The
    difference in accuracy is (b - c) / n = (2 pi - 1) m / n with pi the challenger's share of the
    discordant photos, so the Clopper-Pearson interval of pi maps to an interval of the difference.
    The default 90% two-sided interval makes its lower bound a one-sided 95% bound, the form a
    non-inferiority test uses."""
    a, b = list(challenger_right), list(champion_right)
    if len(a) != len(b):
        raise ValueError(f"the models were judged on different photos ({len(a)} vs {len(b)} answers)")
    n = len(a)
    only_challenger = sum(1 for x, y in zip(a, b) if x and not y)
    only_champion = sum(1 for x, y in zip(a, b) if y and not x)
    m = only_challenger + only_champion
    p_better = float(_binom.sf(only_challenger - 1, m, 0.5)) if m else 1.0
    p_worse = float(_binom.cdf(only_challenger, m, 0.5)) if m else 1.0
    if n == 0:
        return PairedComparison(0, 0, 0, 1.0, 1.0, 0.0, -1.0, 1.0, confidence)
    low, high = clopper_pearson(only_challenger, m, confidence) if m else (0.5, 0.5)
    return PairedComparison(n, only_challenger, only_champion, p_better, p_worse, (only_challenger - only_champion) / n,
                            (2 * low - 1) * m / n, (2 * high - 1) * m / n, confidence)


@dataclass(frozen=True)
class SprtResult:
    decision: str  # "accept" (error rate is p0-like), "reject" (p1-like), "continue"
    verdicts: int
    errors: int
    llr: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Sprt:
    """Wald's SPRT of H0: error rate = p0 against H1: error rate = p1 (p1 > p0). Each error adds
    log(p1/p0) to the log-likelihood ratio, each correct verdict log((1-p1)/(1-p0)); H1 is accepted
    ("reject": the model is worse than promised) at log((1-beta)/alpha), H0 at log(beta/(1-alpha)).
    With p0=0.03, p1=0.20 an error adds 1.90 and a correct verdict subtracts 0.193."""
    p0: float = 0.03
    p1: float = 0.20
    alpha: float = 0.05  # chance of flagging a model whose error rate is p0
    beta: float = 0.05  # chance of passing a model whose error rate is p1

    def __post_init__(self):
        if not 0 < self.p0 < self.p1 < 1:
            raise ValueError(f"need 0 < p0 < p1 < 1, got p0={self.p0}, p1={self.p1}")
        if not (0 < self.alpha < 1 and 0 < self.beta < 1):
            raise ValueError("alpha and beta must be in (0, 1)")

    @property
    def bounds(self) -> tuple[float, float]:
        return math.log(self.beta / (1 - self.alpha)), math.log((1 - self.beta) / self.alpha)

    def llr(self, errors: int, verdicts: int) -> float:
        right = verdicts - errors
        return errors * math.log(self.p1 / self.p0) + right * math.log((1 - self.p1) / (1 - self.p0))

    def run(self, outcomes) -> SprtResult:
        """Sequential over ``outcomes`` (True = an error) in arrival order: stops at the first
        crossing, as a watcher reading them one by one would."""
        lower, upper = self.bounds
        llr, n, errors = 0.0, 0, 0
        step_err, step_ok = math.log(self.p1 / self.p0), math.log((1 - self.p1) / (1 - self.p0))
        for error in outcomes:
            n += 1
            errors += bool(error)
            llr += step_err if error else step_ok
            if llr >= upper:
                return SprtResult("reject", n, errors, llr, lower, upper)
            if llr <= lower:
                return SprtResult("accept", n, errors, llr, lower, upper)
        return SprtResult("continue", n, errors, llr, lower, upper)
