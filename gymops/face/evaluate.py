"""Verification figures of a face model: genuine and impostor scores, the threshold at a target FAR,
and TAR at that FAR (issue 12, item 4's gate).

Why the threshold is derived here for every version and never carried over: a retrained embedding
moves its score distributions, so yesterday's cosine cut would give today's model a different false
accept rate. The threshold is the smallest score that keeps the impostor pairs' accept rate at or
under the target (FAR = accepted impostor pairs / impostor pairs); TAR is the share of genuine pairs
at or above it. With n impostor pairs a FAR of 1e-3 is only resolved when n >= 1000; ``far_resolved``
says so, and the caller reports the count with the figure.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Verification:
    far: float  # the target
    threshold: float
    tar: float
    achieved_far: float
    genuine_pairs: int
    impostor_pairs: int

    @property
    def far_resolved(self) -> bool:
        return self.impostor_pairs * self.far >= 1


def pair_scores(embeddings: np.ndarray, identities: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every unordered pair of photos: (genuine: same identity, impostor: different)."""
    e = np.asarray(embeddings, np.float32)
    sims = e @ e.T
    ids = np.asarray(identities)
    iu = np.triu_indices(len(ids), k=1)
    same = ids[iu[0]] == ids[iu[1]]
    scores = sims[iu]
    return scores[same], scores[~same]


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The smallest threshold (accept when score >= threshold) whose impostor accept rate is <= far."""
    s = np.sort(np.asarray(impostor, np.float32))[::-1]
    allowed = int(np.floor(far * len(s)))  # impostor pairs that may be accepted
    if allowed >= len(s):
        return float(s[-1])
    # accept at most `allowed`: the next float32 above the (allowed+1)-th highest impostor score, so the
    # cut holds whether scores are compared as float32 (numpy) or float64 (Python floats)
    return float(np.nextafter(s[allowed], np.float32(np.inf)))


def verification_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float = 1e-3) -> Verification:
    t = threshold_at_far(impostor, far)
    genuine, impostor = np.asarray(genuine, np.float64), np.asarray(impostor, np.float64)
    return Verification(far, t, float(np.mean(genuine >= t)) if len(genuine) else float("nan"),
                        float(np.mean(impostor >= t)) if len(impostor) else float("nan"),
                        len(genuine), len(impostor))
