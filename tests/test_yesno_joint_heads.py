"""benchmarks/yesno_joint_heads.py: the joint caption + yes/no heads learn a synthetic task where 'yes' means the key
phrase describes the image and the starting (ConSE) space cannot tell: it scores near chance before training."""

import sys
from pathlib import Path

import numpy as np

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, BENCHMARKS)
from yesno_joint_heads import train_and_score  # noqa: E402
sys.path.remove(BENCHMARKS)  # later tests must not import benchmark scripts by accident


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_joint_heads_learn_what_the_starting_space_misses():
    rng = np.random.default_rng(0)
    n_img, n_rows = 120, 600
    concept = _unit(rng.normal(size=(n_img, 384)))  # what each image shows, in text space
    pooled = np.abs(concept @ rng.normal(size=(384, 1280))).astype(np.float32)  # visible only through the tower
    conse = _unit(rng.normal(size=(n_img, 384)))  # the starting space is unrelated to the concept
    gi = rng.integers(0, n_img, n_rows)
    y = rng.integers(0, 2, n_rows)
    other = (gi + rng.integers(1, n_img, n_rows)) % n_img
    key = _unit(np.where(y[:, None] == 1, concept[gi], concept[other]) + 0.1 * rng.normal(size=(n_rows, 384)))
    caps = {"pooled": pooled, "conse": conse, "text": np.repeat(concept, 2, 0), "image": np.repeat(np.arange(n_img), 2)}
    data = {"image_pooled": pooled, "image_conse": conse, "k_raw": key}
    tr, te = np.arange(400), np.arange(400, n_rows)
    before = np.mean(((conse[gi[te]] * key[te]).sum(1) > 0) == y[te])
    p = train_and_score(data, caps, gi, y, tr, te, steps=80)
    assert p.shape == (len(te),) and np.all((p >= 0) & (p <= 1))
    after = np.mean((p > 0.5) == y[te])
    assert before < 0.65 and after > 0.85, (before, after)
