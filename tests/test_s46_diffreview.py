"""Review s46 of the session's own changes: an export into the working folder left the process in a deleted folder;
a CLIP that does not resize (do_resize false) padded its training views with black; a group of uploads whose first
request failed skipped a later request's copy of its photo without adding it."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from polymodal import cache
from polymodal.cache import staged_folder


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "rename-twice"])
def test_a_folder_replaced_while_the_process_stands_in_it_is_still_its_working_folder(tmp_path, monkeypatch, swap):
    """export_onnx(model, ".") from a folder holding an earlier export: the old folder was swapped out and deleted,
    and the process stood in it: os.getcwd() failed, polymodal.load(".") found nothing, a second export raised
    FileNotFoundError."""
    if not swap:
        monkeypatch.setattr(cache, "_exchange", lambda a, b: False)
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "old.txt").write_text("old")
    monkeypatch.chdir(out)
    with staged_folder(".") as stage:
        (stage / "new.txt").write_text("new")
    assert os.getcwd() == str(out)
    assert sorted(os.listdir(".")) == ["new.txt"]
    with staged_folder(".") as stage:  # and again (resolving "." raised FileNotFoundError)
        (stage / "newer.txt").write_text("newer")
    assert sorted(os.listdir(".")) == ["newer.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]


class _NoResizeModel:
    """A CLIP-like image path whose processor says do_resize false: features are its pixels."""

    image_cache_signature = "no-resize|v1"

    def __init__(self):
        from polymodal.data.images import ImageTransform

        self.transform = ImageTransform(resize=0, crop=32, mean=(0, 0, 0), std=(1, 1, 1))

    def image_cache_input(self, pixels):
        return pixels


def _grey_photo(path):
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(path)  # a photo at the model's input size
    return path


def test_training_views_of_a_transform_that_does_not_resize_are_scaled_to_its_input(tmp_path, monkeypatch):
    """Augment picks a random box and the transform resizes it: without a resize, a box smaller than the crop was
    centre-cropped with black borders (a quarter of each view on average)."""
    from polymodal.train.features import image_features

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    photos = [_grey_photo(tmp_path / f"{i}.png") for i in range(4)]
    model = _NoResizeModel()
    feats = np.asarray(image_features(model, photos, views=4, seed=0, progress=False), dtype=np.float32)
    assert feats[0].min() > 0.7  # view 0: the photo as it is (no resize needed)
    assert feats[1:].min() > 0.7, "augmented views padded with black"


def _png(i: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_a_later_request_adds_its_copy_of_a_photo_whose_earlier_request_failed(lite, db, tmp_path, monkeypatch):
    """Queued together: A = [X, a photo the model fails on], B = [X]. A fails, as alone. B got a 200 with X
    "skipped: the same image was sent by another request just before, and could not be added", and X was nowhere;
    alone (and now) B adds X."""
    from polymodal.serve import ServeSettings
    from polymodal.serve.service import Service

    shutil.copytree(db, tmp_path / "db")
    svc = Service(lite, tmp_path / "db", ServeSettings())
    encode = svc.model.encode_image

    def fails_on_boom(images, batch_size=None):
        if any("boom" in str(p) for p in images):
            raise RuntimeError("the model failed on this photo")
        return encode(images, batch_size)

    monkeypatch.setattr(svc.model, "encode_image", fails_on_boom)
    out: list = [None, None]

    def add(i, uploads):
        try:
            out[i] = svc.add_images(uploads)
        except Exception as exc:  # noqa: BLE001
            out[i] = exc

    threads = []
    try:
        with svc._write_lock:  # both queue behind a held writer, A first: one group
            for i, uploads in enumerate([[("x.png", _png(1)), ("boom.png", _png(2))], [("x-too.png", _png(1))]]):
                threads.append(threading.Thread(target=add, args=(i, uploads)))
                threads[-1].start()
                deadline = time.monotonic() + 30
                while len(svc.writes._queue) < i + 1:
                    assert time.monotonic() < deadline, "never queued"
                    time.sleep(0.005)
        for t in threads:
            t.join(60)
        assert isinstance(out[0], RuntimeError)
        assert [a["upload"] for a in out[1]["added"]] == ["x-too.png"] and out[1]["skipped"] == []
        assert svc.ids_for_digests([hashlib.sha256(_png(1)).hexdigest()])
        stored = {p.name for p in svc.uploads.rglob("*") if p.is_file()}
        assert stored == {"000-x-too.png"}  # the failed request's files are gone
    finally:
        svc.close()
