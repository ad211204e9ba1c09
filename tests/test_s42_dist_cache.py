"""torchrun (s42): the processes of `train contrastive` build the image and text feature caches together, each
computing a share of the batches, and every one gets the whole array: equal to one process's, unreadable photos
NaN as before. Each process used to compute the whole cache."""

import os
import sys

import numpy as np
from PIL import Image

from test_distributed import WORLD, _launch  # noqa: E402 (tests/ is on the path)

# Started once per rank: an image cache of 11 photos (photo 4 unreadable) in batches of 2, 2 views, and a text
# cache of 7 captions in batches of 2; each rank saves what it got and how many rows it computed.
SCRIPT = '''
import os, sys
from pathlib import Path

import numpy as np
import torch

from polymodal.data.augment import Augment
from polymodal.encoders.efficientnet import LITE0_TRANSFORM
from polymodal.train import distributed
from polymodal.train.features import image_features, text_features

out = Path(sys.argv[1])
split = os.environ.get("SPLIT", "1") == "1"
if split:
    assert distributed.init_from_env("gloo")
rank = distributed.rank()


class Model:
    transform = LITE0_TRANSFORM
    image_cache_signature = text_cache_signature = "s42-dist"
    computed = {"image": 0, "text": 0}

    def image_cache_input(self, pixels):
        self.computed["image"] += len(pixels)
        return pixels.mean(dim=(2, 3))

    def text_tower(self, texts):
        self.computed["text"] += len(texts)
        return torch.tensor([[len(t), t.count("a"), 1.0] for t in texts])


model = Model()
photos = sorted(str(p) for p in (out / "photos").iterdir())
img = image_features(model, photos, views=2, augment=Augment(), batch_size=2, progress=False, skip_unreadable=True,
                     split_across_ranks=True)
txt = text_features(model, [f"caption {'a' * i}" for i in range(7)], batch_size=2, progress=False,
                    split_across_ranks=True)
# 4 photos in 2 batches, the second batch (rank 1's share) unreadable: rank 1 computes nothing yet gets the array
few = sorted(str(p) for p in (out / "few").iterdir())
few = image_features(model, few, batch_size=2, progress=False, skip_unreadable=True, split_across_ranks=True)
np.savez(out / f"{'split' if split else 'one'}-rank{rank}.npz", img=np.asarray(img), txt=np.asarray(txt),
         few=np.asarray(few),
         computed=np.array([model.computed["image"], model.computed["text"]]))
'''


def test_ranks_build_the_feature_caches_together(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(11):
        if i == 4:
            (photos / f"p{i:02d}.jpg").write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", (40, 30), (20 * i, 255 - 20 * i, 7 * i)).save(photos / f"p{i:02d}.jpg")
    (tmp_path / "few").mkdir()
    for i in range(4):
        if i < 2:
            Image.new("RGB", (40, 30), (90, 9 * i, 40)).save(tmp_path / "few" / f"f{i}.jpg")
        else:
            (tmp_path / "few" / f"f{i}.jpg").write_bytes(b"")
    script = tmp_path / "cache.py"
    script.write_text(SCRIPT)
    # setenv, not os.environ: undone, the session's own cache folder comes back (popping it sent every later test in
    # this worker to ~/.cache/polymodal, where an earlier run's text banks made test_text_search's first call a hit)
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache-split"))
    _launch(script, tmp_path)
    import subprocess

    env = dict(os.environ, SPLIT="0", POLYMODAL_CACHE=str(tmp_path / "cache-one"), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, check=True, timeout=120)
    one = np.load(tmp_path / "one-rank0.npz")
    ranks = [np.load(tmp_path / f"split-rank{r}.npz") for r in range(WORLD)]
    assert np.isnan(one["img"][:, 4]).all() and not np.isnan(np.delete(one["img"], 4, axis=1)).any()
    for got in ranks:  # every rank holds the whole cache, as one process computes it
        np.testing.assert_array_equal(got["img"], one["img"])
        np.testing.assert_array_equal(got["txt"], one["txt"])
        np.testing.assert_array_equal(got["few"], one["few"])
    assert np.isnan(one["few"][0, 2:]).all() and not np.isnan(one["few"][0, :2]).any()
    # 11 photos in 6 batches of 2 (one unreadable), 2 views; 7 captions in 4 batches: a share each, nothing twice
    assert one["computed"].tolist() == [22, 7]  # (+ the 2 readable photos of the second set)
    assert sum(r["computed"] for r in ranks).tolist() == [22, 7]
    assert all(r["computed"][0] > 0 for r in ranks)
    cached = list((tmp_path / "cache-split" / "features").glob("*.npy"))
    # stored: a second run reads them (+ the one-view image entry's rows file, for other lists of its photos: s54)
    assert len(cached) == 4 and len([p for p in cached if p.name.startswith("rowkeys-image-")]) == 1
