"""Every command that takes image-caption pairs, given tar shards (a .tar, a folder, a glob, a brace pattern,
"a.tar::b.tar"): the same results as the same pairs given as JSONL, and broken shards (a corrupt image member, a
truncated shard, a rewritten shard) either still work or end with one error naming the member. Tiny runs over the
sample gallery (test_pretrain's pairs_file: 15 photos x 3 captions)."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest

from polymodal.data.images import ImageTransform
from polymodal.data.pairs import open_pair_image, read_pair_source
from polymodal.data.shards import write_shards
from polymodal.eval.retrieval import read_pairs
from polymodal.train.features import image_features
from polymodal.train.pretrain import contrastive_embeddings
from tests import test_pretrain
from tests.test_finetune_walkthrough import _run

pairs_file = test_pretrain.pairs_file  # its fixture: 15 gallery photos x 3 captions

TRAIN = ["--quiet", "--epochs", "1", "--batch-size", "8", "--warmup-steps", "1", "--seed", "0"]
PRETRAIN = ["--quiet", "--epochs", "1", "--dim", "32", "--batch-size", "16", "--warmup-steps", "1", "--patience", "0",
            "--objectives", "itm:1,mlm:1", "--seed", "0"]


@pytest.fixture(scope="module")
def shards(pairs_file, tmp_path_factory):
    """pairs_file written as 4 shards (4 + 4 + 4 + 3 photos)."""
    folder = tmp_path_factory.mktemp("shards")
    write_shards(read_pair_source(pairs_file), folder, samples_per_shard=4)
    return folder


def _forms(folder):
    s = [str(p) for p in sorted(folder.glob("*.tar"))]
    return {"folder": [str(folder)], "glob": [f"{folder}/*.tar"], "brace": [f"{folder}/shard-{{000000..000003}}.tar"],
            "joined": ["::".join(s)], "several": s}


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _close(expected: dict):
    # the same data in another form gives the same run; torch's multi-threaded sums may differ in the last digits
    return pytest.approx(expected, rel=1e-4, abs=1e-6)


def _printed(capsys, keep: tuple) -> dict:
    """The metrics starting with ``keep`` of the JSON line a command printed last (a run's "best" ones)."""
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return {k: v for k, v in result.get("best", result).items() if k.startswith(keep)}


# ---------------------------------------------------------------------------------------------- commands


def test_train_contrastive_and_eval_read_every_shard_form_as_jsonl(pairs_file, shards, tmp_path, capsys):
    def train(name, pairs, val, *flags):
        assert _run(["train", "contrastive", "--pairs", *pairs, "--val-pairs", *val, "--out", tmp_path / name,
                     *TRAIN, *flags]) == 0
        return _printed(capsys, ("val/",))

    expected = train("jsonl", [pairs_file], [pairs_file])
    assert expected["val/rsum"] > 0
    for name, form in _forms(shards).items():
        assert train(name, form, form) == _close(expected), name
    views = train("views-jsonl", [pairs_file], [pairs_file], "--views", "2")
    assert train("views", [shards], _forms(shards)["brace"], "--views", "2") == _close(views) and views != expected
    resumed = []
    for run in ("jsonl", "joined"):  # --out RUN --resume alone: the sources come from RUN/train_config.json
        assert _run(["train", "contrastive", "--out", tmp_path / run, "--resume", "--epochs", "2", "--quiet"]) == 0
        resumed.append(_printed(capsys, ("val/",)))
    assert resumed[0] == _close(resumed[1]) and resumed[0] != expected

    assert _run(["eval", "retrieval", "--pairs", pairs_file, "--model", tmp_path / "jsonl" / "model"]) == 0
    expected = _printed(capsys, ("t2i", "i2t"))
    for form in ("folder", "glob", "brace", "joined"):
        assert _run(["eval", "retrieval", "--pairs", *_forms(shards)[form], "--model", tmp_path / "jsonl" / "model"]) == 0
        assert _printed(capsys, ("t2i", "i2t")) == _close(expected), form


def test_train_pretrain_reads_shards_as_jsonl_and_mines_with_any_model(pairs_file, shards, tmp_path, capsys):
    """`--negatives lite` (any miner that is not a frozen-tower dual encoder) got "<shard>#<member>" strings in
    encode_image: 'image not found: .../shard-000000.tar#000000000.jpg'."""
    def pretrain(name, pairs):
        assert _run(["train", "pretrain", "--pairs", *pairs, "--val-pairs", *pairs, "--out", tmp_path / name,
                     "--negatives", "lite", *PRETRAIN]) == 0
        return _printed(capsys, ("val/",))

    expected = pretrain("jsonl", [pairs_file])
    assert "val/itm_accuracy_hard" in expected
    assert pretrain("brace", _forms(shards)["brace"]) == _close(expected)
    assert pretrain("joined", _forms(shards)["joined"]) == _close(expected)


def test_miner_embeddings_of_shard_images_equal_the_files(lite, pairs_file, shards):
    files, refs = read_pair_source(pairs_file), read_pair_source(shards)
    img_files, _ = contrastive_embeddings(lite, files.images[:5], files.captions[:2], progress=False, batch_size=2)
    img_refs, _ = contrastive_embeddings(lite, refs.images[:5], refs.captions[:2], progress=False, batch_size=2)
    np.testing.assert_allclose(img_refs, img_files, atol=1e-6)


# ---------------------------------------------------------------------------------------------- broken shards


def test_truncated_shard_keeps_the_samples_before_the_cut(pairs_file, shards, tmp_path):
    """Listing kept the samples before the cut, but opening any of them read the whole member table first and
    refused the shard ('not a readable tar shard ... unexpected end of data'): training left every one of them out
    and `eval retrieval` ended."""
    whole = (shards / "shard-000000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    ps = read_pair_source(cut)
    assert 1 <= len(ps.images) < 4 and ps.skipped
    files = read_pair_source(pairs_file)
    for ref, path in zip(ps.images, files.images):
        assert np.array_equal(np.asarray(open_pair_image(ref)), np.asarray(open_pair_image(path)))
    assert len(read_pairs(cut).images) == len(ps.images)


def test_corrupt_image_member_is_named(pairs_file, tmp_path, capsys, caplog):
    """`eval retrieval` and `export onnx --val-pairs` ended with 'not a readable image: the given bytes'."""
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.jpg", (pairs_file.parent / "cat.jpg").read_bytes())
        _add(tf, "a.txt", b"a cat")
        _add(tf, "b.jpg", b"not a jpeg at all")
        _add(tf, "b.txt", b"broken")
        _add(tf, "c.jpg", (pairs_file.parent / "cat.jpg").read_bytes())  # no caption: skipped when listing
    # left out like an unreadable image file, with a warning naming the member
    with caplog.at_level(logging.WARNING):
        pairs = read_pairs(tmp_path / "s.tar")
    assert pairs.captions == ["a cat"] and len(pairs.images) == 1 and list(pairs.caption_image) == [0]
    assert "left out 1 unreadable image " in caplog.text and "s.tar#b.jpg: not a readable image" in caplog.text
    capsys.readouterr()
    assert _run(["eval", "retrieval", "--pairs", tmp_path / "s.tar", "--model", "lite"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1
    with tarfile.open(tmp_path / "bad.tar", "w") as tf:
        _add(tf, "b.jpg", b"not a jpeg at all")
        _add(tf, "b.txt", b"broken")
    assert _run(["eval", "retrieval", "--pairs", tmp_path / "bad.tar", "--model", "lite"]) == 2
    err = capsys.readouterr().err
    assert "bad.tar#b.jpg" in err and "Traceback" not in err


class _PixelMean:
    """The least a model needs for image_features: a transform, a cache signature, image_cache_input."""

    transform = ImageTransform(resize=8, crop=8)
    image_cache_signature = "pixel-mean"

    def image_cache_input(self, pixels):
        return pixels.mean(dim=(2, 3))


def test_rewritten_shard_is_not_served_stale_cached_features(pairs_file, tmp_path, monkeypatch):
    """Feature caches knew shard members by name only; write_shards names every data set's samples alike
    (shard-000000.tar#000000000.jpg, ...), so training on other data written to the same folder reused the old
    images' features."""
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    files = read_pair_source(pairs_file)
    write_shards(files.subset([0, 1]), tmp_path / "out")
    first = np.array(image_features(_PixelMean(), read_pair_source(tmp_path / "out").images, progress=False))
    write_shards(files.subset([2, 3]), tmp_path / "out")
    refs = read_pair_source(tmp_path / "out").images  # the same names as before
    again = np.array(image_features(_PixelMean(), refs, progress=False))
    expected = np.array(image_features(_PixelMean(), files.images[2:4], progress=False))
    assert not np.array_equal(again, first)
    np.testing.assert_array_equal(again, expected)


def test_several_sources_are_named_in_warnings(shards):
    """`train contrastive --pairs A B` warned 'WARNING : left out ... unreadable image(s)' (no source named)."""
    from polymodal.data.pairs import read_pair_sources

    a, b = _forms(shards)["several"][:2]
    assert read_pair_sources([a, b]).source == f"{a},{b}"


def test_export_validation_set_from_shards_equals_jsonl(pairs_file, shards):
    from polymodal.export.onnx_export import validation_set

    want, got = validation_set(pairs_file, limit=5), validation_set(_forms(shards)["brace"][0], limit=5)
    assert got.captions == want.captions and got.caption_image.tolist() == want.caption_image.tolist()
    transform = ImageTransform(resize=32, crop=32)
    np.testing.assert_array_equal(transform(got.images), transform(want.images))


def test_skipping_and_strict_callers_share_one_feature_cache(pairs_file, tmp_path, monkeypatch):
    """One cache entry for both: a strict caller (VQA predict, contrastive_cv) reuses what a training run cached,
    and still fails on an image that could not be read, with the image's own error."""
    from polymodal.errors import PolymodalError
    from polymodal.train import features

    good = [pairs_file.parent / "cat.jpg", pairs_file.parent / "coffee.jpg"]
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    model = _PixelMean()
    first = image_features(model, good, progress=False, skip_unreadable=True)
    with_bad = [*good, tmp_path / "bad.jpg"]
    assert np.isnan(image_features(model, with_bad, progress=False, skip_unreadable=True)[0, 2]).all()

    def no_computing(*args):
        raise AssertionError("computed again instead of using the cache")

    monkeypatch.setattr(features, "_encode_views", no_computing)  # (the unreadable one is only tried again)
    np.testing.assert_array_equal(image_features(model, good, progress=False), first)
    with pytest.raises(PolymodalError, match=r"bad\.jpg \(cannot identify image file\)"):
        image_features(model, with_bad, progress=False)


def test_cached_shard_files_are_closed_at_exit(tmp_path):
    """read_tar_member keeps shards open for random access; the process must close them when it ends."""
    import subprocess
    import sys

    shard = tmp_path / "a.tar"
    with tarfile.open(shard, "w") as tf:
        _add(tf, "x.txt", b"hello")
    code = f"from polymodal.data.shards import read_tar_member; print(read_tar_member({str(shard)!r}, 'x.txt'))"
    run = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "b'hello'"
    assert "ResourceWarning" not in run.stderr, run.stderr
