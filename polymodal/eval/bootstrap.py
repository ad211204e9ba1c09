"""95% bootstrap intervals for an evaluation's figures: a recall or an accuracy on a few hundred items moves by
several points between samples, and two models are only told apart when their intervals say so."""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000


def bootstrap_ci(values, resamples: int = RESAMPLES, seed: int = 0) -> list[float]:
    """[low, high] of the mean of ``values`` (per-item scores: 0/1 hits, soft accuracies) over ``resamples``
    resamples with replacement, percentile method; seeded, so the same items give the same interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 5_000_000 // values.size)  # resamples drawn at a time: about 40 MB of indices at most
    for start in range(0, resamples, step):
        n = min(step, resamples - start)
        means[start:start + n] = values[rng.integers(0, values.size, size=(n, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]
