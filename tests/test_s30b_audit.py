"""Mutation audit of the eval review (commits 909f0a7..9ceb1a5: grouped intervals, --strict, --classes, items marked
seen_in_training, fusion-training guards): each test here fails on a mutation the earlier tests let through. Fakes
stand in for the models, so the file runs in seconds."""

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.bootstrap import bootstrap_ci
from polymodal.training_photos import count_seen_photos, photo_hash, write_training_photos


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _model_trained_on(tmp_path, gallery, *names) -> Path:
    """A model folder that records these gallery photos as its training photos (the model itself is a fake)."""
    folder = tmp_path / "model"
    write_training_photos(folder, {photo_hash(gallery / f"{n}.jpg") for n in names})
    return folder


NAMES = ["cat", "rocket", "coffee", "astronaut", "motorcycle", "flower", "clock", "moon"]


class NameModel:
    """A fake of every model kind, by file name: embeds a photo (and a text or class naming one of `names`) to that
    name's axis, answers a question with the photo's name (confidence 0.25), captions "a photo of a NAME". A photo
    named broken cannot be read."""

    name = "stem"
    names = NAMES
    dim = len(NAMES) + 1

    @staticmethod
    def _stem(image) -> str:
        path = Path(str(getattr(image, "filename", image)))
        if path.stem == "broken":
            raise PolymodalError(f"cannot read {path.name}")
        return path.stem.split("_as_")[-1]  # "dog_as_cat.png": a dog the model sees as a cat

    def _axis(self, text: str) -> np.ndarray:
        hit = [i for i, n in enumerate(self.names) if n in str(text)]
        return np.eye(self.dim)[hit[0] if hit else -1]

    def encode_image(self, images):
        return np.stack([self._axis(self._stem(i)) for i in images])

    def encode_text(self, texts):
        return np.stack([self._axis(t) for t in texts])

    def label_embeddings(self, classes, templates):
        return self.encode_text(classes)

    def answer(self, image, question, choices=None, top_k=3):
        raise AssertionError("eval answers in batches")

    def predict(self, images, questions):
        return [(self._stem(i), 0.25) for i in images]

    def caption(self, images, **decoding):
        return [f"a photo of a {self._stem(i)}" for i in images]


class StemModel(NameModel):
    """NameModel with `variants`, as an ONNX export's graphs."""

    variants = {"grid": "int8_dynamic", "question": "fp32", "head": "fp32"}


@pytest.fixture()
def stem(monkeypatch):
    monkeypatch.setattr(polymodal, "load", lambda name, runtime="torch", **kw: StemModel())


@pytest.fixture()
def broken(tmp_path) -> Path:
    path = tmp_path / "broken.jpg"
    path.write_text("not a photo")
    return path


# -- bootstrap.py ----------------------------------------------------------------------------------------------------


def test_wilson_is_only_for_all_hits_or_none() -> None:
    # every item 0.5 (a soft accuracy): no spread, and no Wilson interval around a 0/1 rate either
    assert bootstrap_ci([0.5] * 10) == [0.5, 0.5]


def test_grouped_items_are_pooled_by_item_not_averaged_by_photo() -> None:
    # five photos of ten hits each and five photos of one miss each: the mean is over the 55 items, 50/55 = 0.91,
    # and the interval holds it (a mean of per-photo means would centre on 0.5)
    values = [1.0] * 50 + [0.0] * 5
    groups = [i // 10 for i in range(50)] + [100 + i for i in range(5)]
    low, high = bootstrap_ci(values, groups)
    assert low < 50 / 55 < high and low > 0.6


# -- per_item.py and training_photos.py: items marked seen_in_training -------------------------------------------------


def test_items_say_which_photos_the_model_was_trained_on(gallery, tmp_path) -> None:
    from polymodal.eval.per_item import write_items

    model = _model_trained_on(tmp_path, gallery, "cat")  # a Path, as Python callers pass a folder
    out = tmp_path / "items.jsonl"
    cat, rocket = gallery / "cat.jpg", gallery / "rocket.jpg"
    write_items(out, [{"image": str(cat)}, {"image": str(rocket)}], model, [cat, rocket])
    assert [i["seen_in_training"] for i in _items(out)] == [True, False]
    # the items name their photos otherwise (a shard's member): the flags follow those names
    write_items(out, [{"image": "s.tar#rocket.jpg"}, {"image": "s.tar#cat.jpg"}], model, [cat, rocket],
                ["s.tar#cat.jpg", "s.tar#rocket.jpg"])
    assert [i["seen_in_training"] for i in _items(out)] == [False, True]
    write_items(out, [{"image": str(cat)}])  # no model: no flag
    assert "seen_in_training" not in _items(out)[0]


def test_training_photos_are_counted_for_a_path_and_any_iterable(gallery, tmp_path, caplog) -> None:
    model = _model_trained_on(tmp_path, gallery, "cat")
    with caplog.at_level(logging.WARNING):
        assert count_seen_photos(model, (gallery / f"{n}.jpg" for n in ("cat", "rocket")))[0] == 1
    assert "1 of the 2 evaluated photos is one of the photos the model" in caplog.text


@pytest.mark.parametrize("command", ["zeroshot", "vqa", "captions", "retrieval"])
def test_every_eval_marks_its_items_seen_in_training(command, gallery, tmp_path, capsys, stem) -> None:
    model, out = _model_trained_on(tmp_path, gallery, "cat"), tmp_path / "items.jsonl"
    photos = [gallery / "cat.jpg", gallery / "rocket.jpg"]
    if command == "retrieval":  # from a shard: items name "<shard>#<member>", the flags must follow those names
        data = tmp_path / "s.tar"
        with tarfile.open(data, "w") as tf:
            for p in photos:
                for name, body in ((p.name, p.read_bytes()), (f"{p.stem}.txt", f"a {p.stem}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(body)
                    tf.addfile(info, io.BytesIO(body))
        argv = ["--pairs", data]
    else:
        key = {"zeroshot": "label", "vqa": "answer", "captions": "caption"}[command]
        data = _jsonl(tmp_path / "data.jsonl", [{"image": str(p), key: p.stem, "question": "what?"} for p in photos])
        argv = {"zeroshot": ["--labels-file", data], "vqa": ["--qa", data], "captions": ["--pairs", data]}[command]
    assert cli.main(["eval", command, *map(str, argv), "--model", str(model), "--out", str(out)]) == 0
    assert _json_out(capsys)["seen_in_training"] == 1
    flags = {Path(i["image"].split("#")[-1]).stem: i["seen_in_training"] for i in _items(out)}
    assert flags == {"cat": True, "rocket": False}


# -- caveats.py ------------------------------------------------------------------------------------------------------


def test_one_photo_is_said_in_the_singular(caplog) -> None:
    from polymodal.eval.caveats import warn_of_few

    with caplog.at_level(logging.WARNING):
        warn_of_few(1, "photos", "accuracy")
    assert "only 1 photo: accuracy" in caplog.text



# -- check_out: --out never names a data file, in every eval command -------------------------------------------------


@pytest.mark.parametrize("command, flag", [("retrieval", "--pairs"), ("vqa", "--qa"), ("captions", "--pairs"),
                                           ("zeroshot", "--classes")])
def test_out_naming_a_data_file_is_refused_and_leaves_it_whole(command, flag, gallery, tmp_path, capsys, stem) -> None:
    row = {"image": str(gallery / "cat.jpg"), "caption": "a cat", "question": "what?", "answer": "cat"}
    data = _jsonl(tmp_path / "data.jsonl", [row])
    before = data.read_text()
    argv = ["eval", command, flag, str(data), "--model", "stem", "--out", str(data)]
    if command == "zeroshot":  # the classes file is a data file too
        data.write_text("cat\nrocket\n")
        before = data.read_text()
        argv += ["--labels-file", str(_jsonl(tmp_path / "labels.jsonl", [{**row, "label": "cat"}]))]
    assert cli.main(argv) == 2
    assert "one of the data files being evaluated" in capsys.readouterr().err and data.read_text() == before


# -- --strict in every eval command ------------------------------------------------------------------------------------


def _data(command, tmp_path, gallery, broken, bad: str) -> list:
    """The command's data flags: two good rows plus a row without an image ("skipped") or a photo that cannot be
    read ("unreadable")."""
    photos = [gallery / "cat.jpg", gallery / "rocket.jpg"] + ([broken] if bad == "unreadable" else [])
    key = {"zeroshot": "label", "vqa": "answer", "captions": "caption", "retrieval": "caption"}[command]
    rows = [{"image": str(p), key: p.stem, "question": "what?"} for p in photos]
    if bad == "skipped":
        rows.append({key: "cat", "question": "what?"})
    data = _jsonl(tmp_path / "data.jsonl", rows)
    return {"zeroshot": ["--labels-file"], "vqa": ["--qa"]}.get(command, ["--pairs"]) + [str(data)]


@pytest.mark.parametrize("bad", ["skipped", "unreadable"])
@pytest.mark.parametrize("command", ["retrieval", "vqa", "captions", "zeroshot"])
def test_strict_gives_no_figures_when_part_of_the_data_is_left_out(command, bad, gallery, tmp_path, capsys, stem,
                                                                   broken) -> None:
    argv = ["eval", command, *_data(command, tmp_path, gallery, broken, bad), "--model", "stem"]
    assert cli.main(argv) == 0  # without --strict: figures on the rest
    assert json.loads(capsys.readouterr().out)
    assert cli.main(argv + ["--strict"]) == 2
    printed = capsys.readouterr()
    # an unreadable photo ends the run when it is met (eval s32), naming it
    what = "1 skipped row" if bad == "skipped" else "an unreadable image: "
    assert printed.out == "" and f"--strict: {what}" in printed.err
    assert bad == "skipped" or "broken.jpg" in printed.err.split("--strict")[1]


# -- eval zeroshot ---------------------------------------------------------------------------------------------------


def test_a_sample_of_one_class_is_ranked_among_the_given_classes(gallery, tmp_path, capsys, stem) -> None:
    from polymodal.eval.zeroshot import read_labelled_images

    labels = _jsonl(tmp_path / "labels.jsonl", [{"image": str(gallery / "cat.jpg"), "label": "cat"}])
    with pytest.raises(PolymodalError):  # no candidate list: one class cannot be ranked
        read_labelled_images(labels)
    assert read_labelled_images(labels, one_class=True)[1] == ["cat"]
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\nrocket\n")
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--classes", str(classes), "--model",
                     "stem"]) == 0
    result = _json_out(capsys)
    assert (result["classes"], result["images"], result["top1"]) == (2, 1, 1.0)


def test_indented_comments_in_a_classes_file_are_not_classes(tmp_path) -> None:
    from polymodal.eval.zeroshot import read_classes

    classes = tmp_path / "classes.txt"
    classes.write_text("cat\n  # animals above\ndog\n")
    assert read_classes(classes) == ["cat", "dog"]


def test_rows_outside_the_classes_are_counted_as_rows(caplog) -> None:
    from polymodal.eval.zeroshot import keep_candidates

    with caplog.at_level(logging.WARNING):
        _, _, left = keep_candidates(["a", "b", "c", "d"], ["cat", "zebra", "zebra", "dog"], ["cat", "dog"], "f")
    assert left == 2 and "skipped 2 rows whose label is not in --classes" in caplog.text


def test_an_unreadable_photo_on_two_rows_is_one_unreadable_photo(gallery, broken) -> None:
    from polymodal.eval.zeroshot import zeroshot_accuracy

    out = zeroshot_accuracy(StemModel(), [gallery / "cat.jpg", broken, broken, gallery / "rocket.jpg"],
                            ["cat", "cat", "rocket", "rocket"])
    assert (out["images"], out["photos"], out["unreadable"]) == (2, 2, 1)


def test_eval_zeroshot_counts_photos_and_resamples_them_whole(gallery, tmp_path, capsys, caplog, stem) -> None:
    # three photos with seven labels each: 21 rows, 3 photos; each photo is right on its own label only
    rows = [{"image": str(gallery / f"{photo}.jpg"), "label": label} for photo in NAMES[:3] for label in NAMES[:7]]
    out = tmp_path / "items.jsonl"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "zeroshot", "--labels-file", str(_jsonl(tmp_path / "l.jsonl", rows)), "--model",
                         "stem", "--ci", "--out", str(out)]) == 0
    result = _json_out(capsys)
    assert (result["images"], result["photos"], result["top1"]) == (21, 3, round(3 / 21, 4))
    assert "only 3 photos: accuracy" in caplog.text  # 21 rows, but 3 photos
    items = _items(out)
    hits, photos = np.array([i["rank"] for i in items]) <= 1, [i["image"] for i in items]
    assert result["top1_ci95"] == bootstrap_ci(hits, photos) != bootstrap_ci(hits)  # every photo scores 1 of 7
    labels = [i["label"] for i in items]
    assert result["balanced_top1_ci95"] == bootstrap_ci(hits, photos, by=labels)


# -- eval vqa, eval captions -----------------------------------------------------------------------------------------


def test_vqa_items_carry_the_models_confidence(gallery) -> None:
    from polymodal.eval.vqa import vqa_accuracy

    items: list = []
    vqa_accuracy(StemModel(), [{"image": str(gallery / "cat.jpg"), "question": "what?", "answer": "cat"}],
                 details=items)
    assert items[0]["confidence"] == 0.25 and items[0]["score"] == 1.0


def test_eval_captions_names_its_graph_variants_and_says_nothing_of_cider_below_two_photos(gallery, tmp_path, capsys,
                                                                                           caplog, stem) -> None:
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": str(gallery / "cat.jpg"), "caption": "a photo of a cat"}])
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "captions", "--pairs", str(pairs), "--model", "stem"]) == 0
    assert _json_out(capsys)["variants"] == StemModel.variants
    assert "CIDEr-D (its word weights" not in caplog.text  # not scored at all below 2 photos, and said so


def test_a_pair_in_two_sources_is_kept_once_and_listed_as_skipped(gallery, tmp_path) -> None:
    from polymodal.data.pairs import read_pair_sources

    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": str(gallery / "cat.jpg"), "caption": "a cat"}])
    both = read_pair_sources([pairs, pairs])
    assert len(both.pairs) == 1 and len(both.skipped) == 1 and "repeats" in both.skipped[0][1]


def test_onnx_graph_variants_come_from_the_file_names() -> None:
    from polymodal.export.runtime import graph_variants

    assert graph_variants({"prefix": "prefix.onnx", "step": "step.int8_dynamic.onnx"}) == {
        "prefix": "fp32", "step": "int8_dynamic"}


def test_the_cut_warning_counts_the_batchs_cut_texts(caplog) -> None:
    from types import SimpleNamespace

    import torch

    from polymodal.data.tokenizer import warn_once_if_cut

    with caplog.at_level(logging.WARNING):
        warn_once_if_cut(SimpleNamespace(), torch.ones(3, 8, dtype=torch.long), 8, "text tower")
    assert "limit of 8 tokens and was cut there (3 in this batch)" in caplog.text


# -- fusion training -------------------------------------------------------------------------------------------------


def test_a_head_made_for_the_run_is_not_scored_as_epoch_0(gallery, tmp_path, monkeypatch) -> None:
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
    from polymodal.train.trainer import Trainer

    scored: list = []

    def fit(self, resume=False, on_best=None, on_start=None, score_start=False):
        scored.append(score_start)
        self.out.mkdir(parents=True, exist_ok=True)
        on_best(self.model)
        return {}

    monkeypatch.setattr(Trainer, "fit", fit)
    start = tmp_path / "start"
    FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, answers=["cat", "rocket"])).save(start)
    qa = _jsonl(tmp_path / "qa.jsonl", [{"image": str(gallery / f"{n}.jpg"), "question": "what is it?", "answer": n}
                                        for n in ("cat", "rocket")])
    for extra, out in ((["--new-head"], "a"), ([], "b")):
        assert cli.main(["train", "vqa", "--qa", str(qa), "--val-qa", str(qa), "--model", str(start), *extra,
                         "--min-answer-count", "1", "--out", str(tmp_path / out), "--quiet", "--epochs", "1"]) == 0
    assert scored == [False, True]  # a fresh head is random: only the kept head is worth keeping as epoch 0


def test_evaluation_in_training_mode_answers_as_in_eval_mode(gallery) -> None:
    import torch

    from polymodal.eval.vqa import vqa_accuracy
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, dropout=0.5, answers=["yes", "no", "cat"]))
    rows = [{"image": str(gallery / f"{n}.jpg"), "question": "is it a cat?", "answer": "yes"} for n in NAMES[:4]]
    model.eval()
    calm: list = []
    vqa_accuracy(model, rows, details=calm)
    model.train()
    for _ in range(3):  # dropout would change the confidences from one evaluation to the next
        again: list = []
        vqa_accuracy(model, rows, details=again)
        assert [i["confidence"] for i in again] == pytest.approx([i["confidence"] for i in calm], abs=1e-6)
    assert model.training
