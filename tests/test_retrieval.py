"""Retrieval metrics, and `lite` on real Flickr8k photos through benchmarks/retrieval.py."""

import json
import os

import numpy as np

from conftest import shared_data
from polymodal.eval.retrieval import read_pairs, retrieval_metrics
from test_benchmarks_run import run_benchmark

KEYS = ["t2i_R@1", "t2i_R@5", "t2i_R@10", "t2i_median_rank", "i2t_R@1", "i2t_R@5", "i2t_R@10", "i2t_median_rank"]


def test_metrics_on_known_rankings():
    images = np.eye(3, dtype=np.float32)
    # captions 0,1 -> image 0; caption 2 -> image 1 (but closest to image 2); captions 3,4 -> image 2.
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0.2, 0.9], [0, 0, 1], [0, 0.5, 0.5]], dtype=np.float32)
    m = retrieval_metrics(images, texts, np.array([0, 0, 1, 2, 2]))
    # t2i ranks: 1, 1, 2, 1, 2 (caption 4 ties images 1 and 2: a tie counts against it, so rank 2)
    assert m["t2i_R@1"] == 0.6 and m["t2i_R@5"] == 1.0 and m["t2i_median_rank"] == 1.0
    # i2t: image 1's only caption (0.2) ranks below caption 4 (0.5) -> rank 2; images 0 and 2 rank 1.
    assert m["i2t_R@1"] == round(2 / 3, 4) and m["i2t_R@5"] == 1.0 and m["i2t_median_rank"] == 1.0


def _subset(tmp_path, source, n_images):
    rows = [json.loads(line) for line in (source / "pairs.jsonl").read_text().splitlines()]
    keep = sorted({r["image"] for r in rows})[:n_images]
    out = tmp_path / "pairs.jsonl"
    with out.open("w") as f:
        for r in rows:
            if r["image"] in keep:
                rel = os.path.relpath(source / r["image"], tmp_path)
                f.write(json.dumps({"image": rel, "caption": r["caption"]}) + "\n")
    return out


def test_lite_retrieval_on_real_flickr8k_photos(tmp_path, capsys):
    pairs_file = _subset(tmp_path, shared_data("flickr8k-dev"), 100)
    pairs = read_pairs(pairs_file)
    assert len(pairs.images) == 100 and len(pairs.captions) == 500
    # the script's main() in this process: the real photos and the script's code, without a second torch import
    result = run_benchmark("retrieval", ["--pairs", pairs_file, "--model", "lite"], capsys)[-1]
    assert all(k in result for k in KEYS)
    # Chance R@10 over 100 images is 0.10; lite measures about 0.5 on this subset.
    assert result["t2i_R@10"] >= 0.35, result
    assert result["i2t_R@10"] >= 0.35, result
