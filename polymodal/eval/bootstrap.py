"""95% intervals for an evaluation's figures: a recall or an accuracy on a few hundred photos moves by several
points between samples, and two models are only told apart when their intervals say so."""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 1000
Z95 = 1.959964


def bootstrap_ci(values, groups=None, resamples: int = RESAMPLES, seed: int = 0, by=None) -> list[float | None]:
    """[low, high] for the mean of ``values`` (per-item scores: 0/1 hits, soft accuracies), percentile bootstrap
    over ``resamples`` resamples; seeded, so the same items give the same interval.

    ``groups`` (one key per item, e.g. its photo) resamples whole groups: a photo's five captions, or its several
    questions, succeed or fail together, and resampling them one by one gives intervals about half as wide as
    they should be. When every item scores the same (all hits, or none) the bootstrap has no spread to show, so
    the Wilson interval over the groups is given instead: 0 of 40 is [0, 0.088], not [0, 0]. [None, None] when
    there is no item.

    ``by`` (one class per item) gives the interval of the class-balanced mean instead: the mean over the classes
    present in a resample of each class's mean (zero-shot's ``balanced_top1``)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return [None, None]
    keys = np.arange(values.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    sums, counts = np.bincount(keys, weights=values), np.bincount(keys).astype(np.float64)
    clusters = len(sums)
    if np.all(values == values[0]) and values[0] in (0.0, 1.0):
        return [round(x, 4) for x in _wilson(float(values[0]), clusters)]
    rng = np.random.default_rng(seed)
    if by is not None:
        means = _balanced_means(values, keys, np.unique(np.asarray(by), return_inverse=True)[1], clusters, resamples,
                                rng)
        low, high = np.percentile(means, [2.5, 97.5])
        return [round(float(low), 4), round(float(high), 4)]
    means = np.empty(resamples)
    step = max(1, 5_000_000 // clusters)  # resamples drawn at a time: about 40 MB of indices at most
    for start in range(0, resamples, step):
        n = min(step, resamples - start)
        pick = rng.integers(0, clusters, size=(n, clusters))
        means[start:start + n] = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def _balanced_means(values: np.ndarray, keys: np.ndarray, classes: np.ndarray, clusters: int, resamples: int,
                    rng) -> np.ndarray:
    """Per resample of the groups: each item weighs as often as its group was drawn; the mean over the classes
    drawn of each class's weighted mean."""
    n_classes = int(classes.max()) + 1
    means = np.empty(resamples)
    for r in range(resamples):
        weight = np.bincount(rng.integers(0, clusters, size=clusters), minlength=clusters)[keys].astype(np.float64)
        hits = np.bincount(classes, weights=weight * values, minlength=n_classes)
        counts = np.bincount(classes, weights=weight, minlength=n_classes)
        drawn = counts > 0
        means[r] = (hits[drawn] / counts[drawn]).mean()
    return means


def _wilson(p: float, n: int) -> tuple[float, float]:
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)
