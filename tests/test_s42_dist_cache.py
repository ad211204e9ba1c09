"""torchrun (s42): the processes of `train contrastive` build the image and text feature caches together, each
computing a share of the batches, and every one gets the whole array: equal to one process's, unreadable photos
NaN as before. Each process used to compute the whole cache."""

import runpy
import sys

import numpy as np
import torch
from PIL import Image

from test_distributed import WORLD  # noqa: E402 (tests/ is on the path)

# Run by every rank of test_distributed's shared launch (and, with SPLIT=0, by one process for reference): an image
# cache of 11 photos (photo 4 unreadable) in batches of 2, 2 views, and a text cache of 7 captions in batches of 2;
# each rank saves what it got and how many rows it computed.
SCENARIO = '''
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


def write_inputs(folder):
    photos = folder / "photos"
    photos.mkdir()
    for i in range(11):
        if i == 4:
            (photos / f"p{i:02d}.jpg").write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", (40, 30), (20 * i, 255 - 20 * i, 7 * i)).save(photos / f"p{i:02d}.jpg")
    (folder / "few").mkdir()
    for i in range(4):
        if i < 2:
            Image.new("RGB", (40, 30), (90, 9 * i, 40)).save(folder / "few" / f"f{i}.jpg")
        else:
            (folder / "few" / f"f{i}.jpg").write_bytes(b"")


def test_ranks_build_the_feature_caches_together(launched, tmp_path, monkeypatch):
    split = launched["test_s42_dist_cache"]
    # one process's caches, for reference: the scenario with no process group, in this process, on one thread as
    # each rank (setenv, not os.environ: undone, the session's own cache folder comes back; popping it sent every
    # later test in this worker to ~/.cache/polymodal, where an earlier run's text banks made test_text_search's
    # first call a hit)
    write_inputs(tmp_path)
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPLIT", "0")
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache-one"))
    monkeypatch.setattr(sys, "argv", ["scenario.py", str(tmp_path)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runpy.run_path(str(split / "scenario.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    one = np.load(tmp_path / "one-rank0.npz")
    ranks = [np.load(split / f"split-rank{r}.npz") for r in range(WORLD)]
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
    cached = list((split / "cache" / "features").glob("*.npy"))
    # stored: a second run reads them (+ the one-view image entry's rows file, for other lists of its photos: s54)
    assert len(cached) == 4 and len([p for p in cached if p.name.startswith("rowkeys-image-")]) == 1
