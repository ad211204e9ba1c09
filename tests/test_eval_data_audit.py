"""What a mutation audit of the eval metrics, the data readers and the cache helpers showed slipping through:
retrieval R@10, zero-shot top-1/top-5 and its labels file, VQA accuracy per type and its QA files, prompt-ensemble
caching and softmax, answer normalisation, augmentation crop geometry and validation, JSONL reading, tar shards
(atomic writes, captions, rank checks, rewritten shards) and atomic files/folders. Each test was checked to fail
on its mutation; all use tiny synthetic inputs."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

import polymodal.cache
from polymodal.apps.zeroshot import PromptCache, ZeroShotMixin, rank_labels
from polymodal.cache import atomic_write_bytes, cache_dir, staged_folder
from polymodal.data.answers import normalize_answer, unique_choices
from polymodal.data.augment import Augment
from polymodal.data.jsonl import iter_json_rows
from polymodal.data.pairs import Pair
from polymodal.data.samples import write_sample_gallery
from polymodal.data.shards import (
    image_bytes, iter_samples, split_tar_ref, tar_ref, write_shards,
)
from polymodal.errors import PolymodalError
from polymodal.eval.retrieval import retrieval_metrics
from polymodal.eval.vqa import QARow, accuracy_by_type, answer_type, as_rows, read_qa, vqa_accuracy
from polymodal.eval.zeroshot import read_labelled_images, zeroshot_accuracy


def png(path, colour=(200, 30, 30), size=(8, 8)):
    Image.new("RGB", size, colour).save(path)
    return path


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def prompt_vector(prompt: str, dim: int = 8) -> np.ndarray:
    """A fixed pseudo-random embedding per prompt string."""
    return np.random.default_rng(zlib.crc32(prompt.encode())).normal(size=dim).astype(np.float32)


class FakeEmbedder(ZeroShotMixin):
    """encode_text: a fixed vector per prompt; encode_image: looks images up in a table."""

    logit_scale = 100.0

    def __init__(self, image_table=None):
        self.image_table = image_table or {}
        self.text_calls = []

    def encode_text(self, texts):
        self.text_calls.append(list(texts))
        return np.stack([prompt_vector(t) for t in texts])

    def encode_image(self, images):
        return np.stack([self.image_table[str(i)] for i in images])


# ---------------------------------------------------------------------------------------------- retrieval


def test_retrieval_reports_recall_at_10_and_counts_it():
    # 12 images, one caption each; caption 0's image ranks 7th, caption 1's 11th, every other caption's 1st
    images = np.eye(12, dtype=np.float32)
    owner = np.array([6, 10] + [i for i in range(12) if i not in (6, 10)])
    texts = images[owner].copy()
    texts[0, :7] = np.linspace(1.0, 0.4, 7)  # its image (6) is the 7th best
    texts[1, :11] = np.linspace(1.0, 0.1, 11)  # its image (10) is the 11th best
    m = retrieval_metrics(images, unit(texts), owner)
    assert m["t2i_R@1"] == m["t2i_R@5"] == round(10 / 12, 4)
    assert m["t2i_R@10"] == round(11 / 12, 4) and m["t2i_median_rank"] == 1.0
    assert set(m) == {f"{d}_{k}" for d in ("t2i", "i2t") for k in ("R@1", "R@5", "R@10", "median_rank")}


# ---------------------------------------------------------------------------------------------- zero-shot eval


def _labels_file(tmp_path, rows):
    for r in rows:
        if r.get("image") and not r["image"].startswith("missing"):
            png(tmp_path / r["image"])
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_zeroshot_top1_top5_from_known_ranks():
    classes = [f"c{i}" for i in range(7)]
    model = FakeEmbedder()
    class_emb = model.label_embeddings(classes, ("a photo of a {}.",))  # [7, 8]
    table, images, labels = {}, [], []
    for n, rank in enumerate((0, 1, 4, 5)):  # image n's true class c0 is ranked exactly `rank` (0-based)
        order = list(range(1, 7))
        order.insert(rank, 0)  # class ids, best first
        scores = np.empty(7)
        scores[order] = np.linspace(1.0, 0.1, 7)
        table[f"img{n}"] = np.linalg.lstsq(class_emb, scores, rcond=None)[0].astype(np.float32)  # emb @ class_emb.T
        images.append(f"img{n}")
        labels.append("c0")
    for c in range(1, 7):  # one image per other class, equal to its class embedding: rank 0
        table[f"x{c}"] = class_emb[c]
        images.append(f"x{c}")
        labels.append(f"c{c}")
    model.image_table = table
    out = zeroshot_accuracy(model, images, labels, templates=("a photo of a {}.",))
    # balanced: c0 is right on 1 of its 4 images, c1..c6 on theirs: (0.25 + 6) / 7
    assert out == {"top1": 0.7, "top5": 0.9, "balanced_top1": 0.8929, "images": 10, "photos": 10, "unreadable": 0,
                   "not_finite": 0, "classes": 7}


def test_zeroshot_uses_every_template(tmp_path):
    model = FakeEmbedder({"a": unit(np.ones(8)), "b": unit(-np.ones(8))})
    templates = ("a photo of a {}.", "a drawing of a {}.", "the {}.")
    zeroshot_accuracy(model, ["a", "b"], ["x", "y"], templates=templates)
    assert sorted(model.text_calls[-1]) == sorted(t.format(c) for c in ("x", "y") for t in templates)
    with pytest.raises(PolymodalError, match="every image has the label 'x'; .* at least two classes"):
        zeroshot_accuracy(model, ["a", "b"], ["x", "x"], templates=templates)  # top-1 would be 1.0 whatever the model


def test_labels_file_resolves_images_against_its_folder_and_skips_blank_labels(tmp_path, monkeypatch, caplog):
    data = tmp_path / "data"
    data.mkdir()
    path = _labels_file(data, [{"image": "a.png", "label": "cat"}, {"image": "b.png", "label": ""},
                               {"image": "c.png", "label": "dog"}])
    monkeypatch.chdir(tmp_path)  # not the labels file's folder
    with caplog.at_level(logging.WARNING):
        images, labels = read_labelled_images(path)
    assert images == [(data / "a.png").resolve(), (data / "c.png").resolve()] and labels == ["cat", "dog"]
    assert "skipped 1 unusable row (first" in caplog.text and "no image or label" in caplog.text


# ---------------------------------------------------------------------------------------------- VQA


def _row(answer, answer_type=None):
    return QARow("img.png", "q?", normalize_answer(answer), answer_type)


def test_vqa_accuracy_overall_and_per_type():
    rows = [_row("yes"), _row("no"), _row("yes"), _row("red"), _row("two", "number"), _row("three", "number")]
    predicted = ["Yes.", "yes", " YES ", "Red", "two", "four"]
    m = accuracy_by_type(predicted, rows)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["count"] == 6
    assert m["per_type"] == {"number": 0.5, "other": 1.0, "yes/no": pytest.approx(2 / 3)}
    assert m["per_type_count"] == {"number": 2, "other": 1, "yes/no": 3}
    assert answer_type("Yes.") == "yes/no" and answer_type(" NO ") == "yes/no" and answer_type("blue") == "other"


def test_vqa_accuracy_refuses_a_prediction_count_mismatch():
    with pytest.raises(PolymodalError, match="2 predictions for 3 rows"):
        accuracy_by_type(["yes", "no"], [_row("yes")] * 3)


class FakeVQA:
    def __init__(self, answers):
        self.answers = answers

    def answer(self, image, question):  # makes it a VQA model for require_vqa
        raise NotImplementedError

    def predict(self, images, questions):
        return [(self.answers[q], 1.0) for q in questions]


def test_vqa_accuracy_of_dict_rows_normalises_answers_and_needs_rows():
    model = FakeVQA({"colour?": "red", "cat?": "yes"})
    rows = [{"image": "a.png", "question": "colour?", "answer": "Red."},
            {"image": "a.png", "question": "cat?", "answer": " Yes"}]
    m = vqa_accuracy(model, rows, cache=False)
    assert m["accuracy"] == 1.0 and m["per_type_count"] == {"other": 1, "yes/no": 1}
    assert as_rows(rows)[0].answer == "red"
    with pytest.raises(PolymodalError, match="no rows"):
        vqa_accuracy(model, [], cache=False)


def test_read_qa_skips_missing_images_reads_every_file_and_resolves_per_file(tmp_path, monkeypatch, caplog):
    files = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        png(folder / "pic.png")
        rows = [{"image": "pic.png", "question": f"what  is\n{name}?", "answer": "A Cat."},
                {"image": "gone.png", "question": "q", "answer": "a"}]
        (folder / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        files.append(folder / "qa.jsonl")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        rows = read_qa(files)
    assert [r.image for r in rows] == [(tmp_path / "one" / "pic.png").resolve(), (tmp_path / "two" / "pic.png").resolve()]
    assert [r.question for r in rows] == ["what is one?", "what is two?"] and {r.answer for r in rows} == {"a cat"}
    assert "image file not found: gone.png" in caplog.text


# ---------------------------------------------------------------------------------------------- prompt cache / classify


def _expected_label_emb(labels, templates):
    emb = np.stack([np.mean([prompt_vector(t.format(lab)) for t in templates], axis=0) for lab in labels])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_prompt_ensemble_is_the_normalised_mean_per_label_and_keyed_by_templates():
    model = FakeEmbedder()
    labels, t1, t2 = ["cat", "dog", "bird"], ["a photo of a {}.", "a drawing of a {}."], ["the {}."]
    np.testing.assert_allclose(model.label_embeddings(labels, t1), _expected_label_emb(labels, t1), atol=1e-6)
    np.testing.assert_allclose(model.label_embeddings(labels, t2), _expected_label_emb(labels, t2), atol=1e-6)
    assert model._prompts.misses == 2  # other templates are another entry, never the first one's matrix
    model.label_embeddings(labels, t1)
    assert model._prompts.misses == 2


def test_prompt_cache_is_lru_and_keeps_the_newest():
    cache = PromptCache(FakeEmbedder(), size=2)
    t = ("a {}.",)
    for labels in (["a"], ["b"], ["a"], ["c"]):  # a is used again before c: b is the least recently used
        cache.get(labels, t)
    assert cache.misses == 3
    cache.get(["c"], t), cache.get(["a"], t)
    assert cache.misses == 3
    cache.get(["b"], t)
    assert cache.misses == 4


def test_template_without_a_slot_is_refused():
    with pytest.raises(PolymodalError, match="has no"):
        FakeEmbedder().label_embeddings(["cat", "dog"], ["a photo"])


def test_forget_label_embeddings_recomputes():
    model = FakeEmbedder()
    first = model.label_embeddings(["cat", "dog"]).copy()
    model.encode_text = lambda texts: -np.stack([prompt_vector(t) for t in texts])  # "training" changed the text side
    model.forget_label_embeddings()
    np.testing.assert_allclose(model.label_embeddings(["cat", "dog"]), -first, atol=1e-6)


def test_rank_labels_softmax_is_stable_and_top_k_is_k():
    image = unit(np.eye(4, dtype=np.float32)[:2] + 0.01)  # float32 cosines near 1, times logit scale 100
    labels = ["a", "b", "c", "d"]
    ranked = rank_labels(image, np.eye(4, dtype=np.float32), labels, 100.0)
    for row, best in zip(ranked, ("a", "b")):
        scores = [s for _, s in row]
        assert row[0][0] == best and np.isfinite(scores).all() and abs(sum(scores) - 1) < 1e-5
    assert [len(r) for r in rank_labels(image, np.eye(4, dtype=np.float32), labels, 100.0, top_k=2)] == [2, 2]


# ---------------------------------------------------------------------------------------------- answers


def test_normalize_answer_and_choices():
    assert normalize_answer("  Yes.") == "yes" and normalize_answer("Two  Cats") == "two cats"
    assert unique_choices(["Yes", "yes.", " ", "No"]) == {"yes": "Yes", "no": "No"}
    with pytest.raises(PolymodalError, match="no choices"):
        unique_choices(["", "  "])


# ---------------------------------------------------------------------------------------------- augmentation


def test_crop_boxes_stay_inside_wide_and_tall_images():
    aug = Augment(flip=False)
    for size in ((200, 20), (20, 200)):
        for seed in range(20):
            (left, top, right, bottom), _ = aug.params(size, seed)
            assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1], (size, seed)


def test_crop_aspect_follows_an_asymmetric_ratio():
    aug = Augment(flip=False, scale=(0.2, 0.3), ratio=(1.8, 2.0))
    for seed in range(20):
        (left, top, right, bottom), _ = aug.params((300, 300), seed)
        assert 1.6 < (right - left) / (bottom - top) < 2.2


def test_fallback_centre_crop_of_a_very_tall_image_keeps_the_ratio():
    (left, top, right, bottom), _ = Augment(flip=False, scale=(0.9, 1.0)).params((10, 1000), 0)
    assert (right - left, bottom - top) == (10, 13) and top == (1000 - 13) // 2


@pytest.mark.parametrize("kw", [{"scale": (0.5, 1.5)}, {"ratio": (2.0, 1.0)}])
def test_invalid_augment_ranges_are_refused(kw):
    with pytest.raises(PolymodalError, match="invalid"):
        Augment(**kw)


# ---------------------------------------------------------------------------------------------- JSONL


def test_jsonl_rows_bom_line_numbers_blank_lines_and_non_objects(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n[1, 2]\n{bad\n{"a": 2}\n')
    rows = list(iter_json_rows(path, "fix it"))
    assert [(w.rsplit(":", 1)[1], r, why.split(" (")[0]) for w, r, why in rows] == [
        ("1", {"a": 1}, ""), ("3", None, "not a JSON object"), ("4", None, "bad JSON"), ("5", {"a": 2}, "")]
    path.write_text('[{"a": 1}, ')
    with pytest.raises(PolymodalError, match="not valid JSON.*fix it"):
        list(iter_json_rows(path, "fix it"))


# ---------------------------------------------------------------------------------------------- sample gallery


def test_sample_gallery_lists_every_photo_on_a_second_call(tmp_path, monkeypatch):
    import polymodal.data.samples as samples

    photos = {"red": (np.full((4, 4, 3), 200, np.uint8), "red"), "grey": (np.full((4, 4), 90, np.uint8), "grey")}
    monkeypatch.setattr(samples, "sample_photos", lambda: photos)
    first = write_sample_gallery(tmp_path)
    assert sorted(p.name for p in first) == ["grey.jpg", "red.jpg"]
    assert write_sample_gallery(tmp_path) == first  # already there: still listed
    assert Image.open(tmp_path / "grey.jpg").mode == "RGB"


# ---------------------------------------------------------------------------------------------- shards


def _add(tf, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tf.addfile(info, io.BytesIO(payload))


def _png_bytes(colour=(10, 200, 10)):
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG")
    return out.getvalue()


def test_tar_refs_with_a_hash_in_the_folder_name(tmp_path):
    folder = tmp_path / "run#1"
    folder.mkdir()
    shard, = write_shards([Pair(str(png(tmp_path / "a.png")), "a red square")], folder)
    ref = tar_ref(shard, "000000000.png")
    assert split_tar_ref(ref) == (shard, "000000000.png")
    assert image_bytes(ref) == (tmp_path / "a.png").read_bytes()


def test_failed_rewrite_keeps_the_old_shard(tmp_path):
    a, b = png(tmp_path / "a.png"), png(tmp_path / "b.png", (0, 0, 255))
    shard, = write_shards([Pair(str(a), "one"), Pair(str(b), "two")], tmp_path / "out")
    before = shard.read_bytes()
    b.unlink()  # the second image of the rewrite is missing: it fails half way through the shard
    with pytest.raises(PolymodalError):
        write_shards([Pair(str(a), "one"), Pair(str(b), "two")], tmp_path / "out")
    assert shard.read_bytes() == before
    assert [p.name for p in (tmp_path / "out").iterdir()] == [shard.name]  # no temporary file left


def test_write_shards_drops_blank_captions_and_checks_its_size(tmp_path):
    a = png(tmp_path / "a.png")
    with pytest.raises(PolymodalError, match="no pairs"):
        write_shards([Pair(str(a), "  \n ")], tmp_path / "out")
    with pytest.raises(PolymodalError, match="samples_per_shard"):
        write_shards([Pair(str(a), "x")], tmp_path / "out", samples_per_shard=0)


def test_json_captions_list_and_hidden_members(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "._x.png", b"AppleDouble junk")
        _add(tf, "x.png", _png_bytes())
        _add(tf, "x.json", json.dumps({"captions": ["one", " two  words "]}).encode())
        _add(tf, "__meta__.txt", b"not a sample")
    skipped = []
    samples = list(iter_samples(tmp_path / "s.tar", skipped=skipped))
    assert [(s.key, s.captions) for s in samples] == [("x", ["one", "two words"])]
    assert skipped == []


def test_a_rewritten_shard_is_read_again_not_from_the_open_file_cache(tmp_path):
    red, blue = png(tmp_path / "red.png", (255, 0, 0)), png(tmp_path / "blue.png", (0, 0, 255))
    shard, = write_shards([Pair(str(red), "red")], tmp_path / "out")
    ref = tar_ref(shard, "000000000.png")
    assert image_bytes(ref) == red.read_bytes()
    write_shards([Pair(str(blue), "blue")], tmp_path / "out")  # same shard name, same member name, new content
    assert image_bytes(ref) == blue.read_bytes()


# ---------------------------------------------------------------------------------------------- cache helpers


def test_cache_dir_follows_polymodal_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_cache_dir_without_polymodal_cache_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("POLYMODAL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "polymodal"


def test_an_empty_xdg_cache_home_counts_as_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("POLYMODAL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert cache_dir() == tmp_path / "home" / ".cache" / "polymodal"
    assert list((tmp_path / "work").iterdir()) == []


def test_atomic_write_replaces_the_file_a_reader_has_open(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")
    with open(path, "rb") as reader:
        atomic_write_bytes(path, b"new")
        assert reader.read() == b"old contents"  # a reader never sees a truncated or mixed file
    assert path.read_bytes() == b"new"


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def broken(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_staged_folder_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # out -> .old succeeded; stage -> out fails
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    monkeypatch.setattr(polymodal.cache, "_exchange", lambda a, b: False)  # no renameat2: the two-rename path
    with pytest.raises(OSError):
        with staged_folder(out) as stage:
            (stage / "new.txt").write_text("new")
    monkeypatch.undo()
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_staged_folder_through_a_symlink_keeps_the_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "old.txt").write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    with staged_folder(link) as stage:
        (stage / "new.txt").write_text("new")
    assert link.is_symlink() and [p.name for p in real.iterdir()] == ["new.txt"]


def test_label_embeddings_follow_the_torch_weights_without_being_told():
    # a researcher's own training loop (or load_state_dict) changes the text side: classify() must not rank
    # against label vectors of the old weights
    import torch

    class TorchEmbedder(torch.nn.Module, ZeroShotMixin):
        logit_scale = 10.0

        def __init__(self):
            super().__init__()
            self.text = torch.nn.Linear(8, 8, bias=False)

        def encode_text(self, texts):
            with torch.no_grad():
                return self.text(torch.from_numpy(np.stack([prompt_vector(t) for t in texts]))).numpy()

    model, labels = TorchEmbedder(), ["cat", "dog"]
    first = model.label_embeddings(labels).copy()
    model.label_embeddings(labels)
    assert model._prompts.misses == 1
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.text(torch.ones(1, 8)).sum().backward()
    opt.step()  # one training step
    after_step = model.label_embeddings(labels)
    assert model._prompts.misses == 2 and not np.allclose(after_step, first, atol=1e-3)
    np.testing.assert_allclose(after_step, _expected_label_emb_of(model, labels), atol=1e-5)
    model.load_state_dict({"text.weight": torch.eye(8)})  # reloaded weights
    np.testing.assert_allclose(model.label_embeddings(labels), _expected_label_emb(labels, ["a photo of a {}."]),
                               atol=1e-5)
    model.text = torch.nn.Linear(8, 8, bias=False)  # a swapped module
    model.label_embeddings(labels)
    assert model._prompts.misses == 4


def _expected_label_emb_of(model, labels):
    emb = model.encode_text([f"a photo of a {lab}." for lab in labels])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_label_embeddings_with_progress_show_a_bar_and_give_the_same_vectors(capsys):
    labels, t = [f"class {i}" for i in range(700)], ("a photo of a {}.", "a {}.")  # 1,400 prompts: 3 chunks
    model = FakeEmbedder()
    emb = model.label_embeddings(labels, t, progress=True)
    assert "class prompts" in capsys.readouterr().err
    np.testing.assert_allclose(emb, _expected_label_emb(labels, t), atol=1e-6)
    assert [len(c) for c in model.text_calls] == [512, 512, 376]
    model.label_embeddings(labels, t, progress=True)  # cached: no second bar
    assert "class prompts" not in capsys.readouterr().err
