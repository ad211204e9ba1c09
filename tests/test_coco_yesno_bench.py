"""benchmarks/coco_yesno.py's diagnostics and coco_yesno_views.py's crops: row kinds of the accuracy breakdown
(complementary pairs, phrases seen in training with the opposite answer), exact pool z-scores, and the seven views."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = str(Path(__file__).resolve().parents[1] / "benchmarks")
sys.path.insert(0, BENCHMARKS)
from coco_yesno import breakdown, pair_ranking, pool_z  # noqa: E402
from coco_yesno_tuned_towers import parse_configs  # noqa: E402
from coco_yesno_views import best_cell, views  # noqa: E402
sys.path.remove(BENCHMARKS)  # later tests must not import benchmark scripts by accident


def _rows(spec):
    return [{"question": q, "answer": a} for q, a in spec]


def test_breakdown_separates_pairs_and_phrases_seen_with_the_opposite_answer():
    rows = _rows([("Is this a zoo?", "yes"), ("Could this be zoo?", "no"),  # same key phrase, both answers
                  ("Is this a kitchen?", "yes"), ("Is this a kitchen?", "yes"),
                  ("Are there any dogs in the picture?", "no")])
    correct = np.array([True, False, True, True, False])
    folds = [(np.array([0, 2]), np.array([1, 3, 4])), (np.array([1, 3, 4]), np.array([0, 2]))]
    got = breakdown(rows, correct, folds)
    assert got["phrase asked with both answers"] == (2, 0.5)
    assert got["phrase asked with one answer"] == (3, round(2 / 3, 4))
    assert got["phrase seen in training, opposite answer"] == (2, 0.5)  # rows 0 and 1 see each other's answer
    assert got["phrase seen in training, same answer"] == (2, 1.0)  # the two kitchen rows
    assert got["phrase new to the training fold"] == (1, 0.0)
    assert got["'are there ...'"] == (1, 0.0) and got["'could this ...'"] == (1, 0.0)


def test_pool_z_matches_a_direct_computation_and_uses_only_training_rows():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(6, 4)), rng.normal(size=(8, 4))
    gi, tr = np.array([0, 1, 2, 3, 4, 5, 0, 1]), np.array([0, 1, 2, 6])
    z = pool_z(image, text, gi, tr, "image")
    pool = text[7] @ image[[0, 1, 2]].T
    assert np.isclose(z[7], (text[7] @ image[1] - pool.mean()) / (pool.std() + 1e-6))
    image2 = image.copy()
    image2[5] += 100  # an image no training row uses cannot move anyone's image-pool z-score but its own rows'
    assert np.allclose(pool_z(image2, text, gi, tr, "image")[:5], z[:5])
    zt = pool_z(image, text, gi, tr, "text")
    pool = image[gi[3]] @ text[[0, 1, 2, 6]].T
    assert np.isclose(zt[3], (image[3] @ text[3] - pool.mean()) / (pool.std() + 1e-6), atol=1e-3)  # pool rounded to 1e-5


def test_views_are_whole_mirror_and_five_crops(tmp_path):
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[:, :50] = 255  # left half white
    Image.fromarray(arr).save(tmp_path / "half.png")
    v = views(str(tmp_path / "half.png"), 32)
    assert v.shape == (7, 3, 32, 32) and v.min() >= -1 and v.max() <= 1
    assert np.allclose(v[1], v[0][:, :, ::-1], atol=0.05)  # the mirror
    assert v[2].mean() > 0.5 and v[3].mean() < -0.5  # top-left crop mostly white, top-right mostly black


def test_pair_ranking_counts_only_yes_no_pairs_of_one_phrase_on_different_photos():
    rows = _rows([("Is this a zoo?", "yes"), ("Could this be zoo?", "no"), ("Is this a zoo?", "no"),
                  ("Is this a kitchen?", "yes"), ("Is this a kitchen?", "no"), ("Is this a farm?", "yes")])
    image_index = np.array([0, 1, 2, 3, 3, 4])  # the kitchen rows share a photo: not a pair
    n, frac = pair_ranking(rows, np.array([0.5, 0.4, 0.9, 1.0, 0.0, 0.0]), image_index)
    assert n == 2 and frac == 0.5  # zoo yes (0.5) beats no (0.4), loses to no (0.9)
    n, frac = pair_ranking(rows[5:], np.zeros(1), image_index[5:])
    assert n == 0 and frac is None  # null in the JSON line: NaN is not JSON (test_s50_benchreview)


def test_tuned_tower_configs_parse_or_say_what_is_expected():
    assert parse_configs("0:0, 2:0,2:2") == [(0, 0), (2, 0), (2, 2)]
    for bad in ("2", "a:b", "1:-1", "", "1:2:3"):
        with pytest.raises(SystemExit, match="image_blocks:text_layers"):
            parse_configs(bad)


def test_best_cell_is_each_phrases_best_cosine_over_an_images_cells():
    rng = np.random.default_rng(0)
    cells = rng.standard_normal((5, 49, 8)).astype(np.float16)
    phrases = rng.standard_normal((300, 8)).astype(np.float32)  # more than one 256-row chunk
    got = best_cell(cells, phrases)
    want = np.einsum("pd,icd->pic", phrases, cells.astype(np.float32)).max(2)
    assert got.shape == (300, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
