"""Mutation audit of s30's changes (training photos recorded beside models, eval caveats, --out/--ci, label checks,
the token-limit warning): each test here fails on a mutation the earlier tests let through."""

import json
import logging
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

import polymodal
from polymodal import cli
from polymodal.errors import PolymodalError
from polymodal.eval.bootstrap import bootstrap_ci
from polymodal.training_photos import (FILE_NAME, TrainingPhotos, count_seen_photos, photo_hash,
                                       read_training_photos, write_training_photos)

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _hashes(gallery, *names) -> set:
    return {photo_hash(gallery / f"{n}.jpg") for n in names}


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


class SavesConfig:
    def save(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text("{}")


# -- training_photos.py ---------------------------------------------------------------------------------------------


def test_an_unreadable_training_photo_is_left_out_of_the_record(gallery, tmp_path) -> None:
    TrainingPhotos([gallery / "cat.jpg", tmp_path / "gone.jpg"]).save(SavesConfig(), tmp_path / "model")
    assert read_training_photos(tmp_path / "model") == _hashes(gallery, "cat")


def test_a_hand_edited_record_with_blank_lines_reads_as_its_hashes(gallery, tmp_path) -> None:
    (tmp_path / FILE_NAME).write_text(f"# mine\n\n{photo_hash(gallery / 'cat.jpg')}\n  \n")
    assert read_training_photos(tmp_path) == _hashes(gallery, "cat")


def test_an_empty_record_means_none_seen_not_unknown(gallery, tmp_path) -> None:
    write_training_photos(tmp_path, set())
    assert count_seen_photos(str(tmp_path), [gallery / "cat.jpg"])[0] == 0


def test_record_script_reads_qa_files_and_refuses_to_record_nothing(gallery, tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import record_training_photos
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    qa = _jsonl(tmp_path / "qa.jsonl", [{"image": str(gallery / "cat.jpg"), "question": "what?", "answer": "cat"}])
    (tmp_path / "model").mkdir()
    assert record_training_photos.main(Namespace(model=str(tmp_path / "model"), pairs=None, qa=[str(qa)])) == 0
    assert read_training_photos(tmp_path / "model") == _hashes(gallery, "cat")
    (tmp_path / "other").mkdir()
    with pytest.raises(PolymodalError, match="no photos to record"):
        record_training_photos.main(Namespace(model=str(tmp_path / "other"), pairs=None, qa=None))
    assert read_training_photos(tmp_path / "other") is None


# -- eval/caveats.py, eval/bootstrap.py ------------------------------------------------------------------------------


def test_twenty_photos_are_enough_and_nineteen_are_not(caplog) -> None:
    from polymodal.eval.caveats import warn_of_few

    with caplog.at_level(logging.WARNING):
        warn_of_few(20, "photos", "recall")
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        warn_of_few(19, "photos", "recall")
    assert "only 19 photos" in caplog.text


def test_bootstrap_interval_is_a_95_percent_one_and_draws_every_item() -> None:
    values = np.r_[np.ones(200), np.zeros(200)]  # mean 0.5, standard error 0.025
    low, high = bootstrap_ci(values)
    assert high - low == pytest.approx(2 * 1.96 * 0.025, rel=0.12)  # a 90% interval would be 18% narrower
    assert bootstrap_ci([0.0, 1.0]) == [0.0, 1.0]  # both items are drawn: the mean ranges over 0, 0.5 and 1


# -- data/jsonl.py, eval/zeroshot.py ---------------------------------------------------------------------------------


def test_a_null_split_is_not_a_second_split_value(gallery, tmp_path, caplog) -> None:
    from polymodal.eval.vqa import read_qa

    row = {"image": str(gallery / "cat.jpg"), "question": "q?", "answer": "yes"}
    splits = ["dev", None, "dev"]
    qa = _jsonl(tmp_path / "qa.jsonl", [{**row, "question": f"q{n}?", "split": s} for n, s in enumerate(splits)])
    with caplog.at_level(logging.WARNING):
        assert len(read_qa(qa)) == 3
    assert "split" not in caplog.text


def _labels(tmp_path, gallery, rows) -> Path:
    return _jsonl(tmp_path / "labels.jsonl",
                  [{"image": str(gallery / f"{n}.jpg"), "label": label} for n, label in rows])


def test_zeroshot_labels_blank_or_spaced_differently(gallery, tmp_path, caplog) -> None:
    from polymodal.data.jsonl import counting_skipped
    from polymodal.eval.zeroshot import read_labelled_images

    rows = [("cat", "tabby  cat"), ("rocket", "tabby cat"), ("coffee", "   "), ("flower", "flower")]
    with caplog.at_level(logging.WARNING), counting_skipped() as skipped:
        _, labels = read_labelled_images(_labels(tmp_path, gallery, rows))
    assert labels == ["tabby cat", "tabby cat", "flower"] and skipped == [1]  # a blank label is no class
    assert "must be a class name" in caplog.text and "differing only in case" not in caplog.text


def test_zeroshot_case_variants_take_the_commonest_spelling(gallery, tmp_path) -> None:
    from polymodal.eval.zeroshot import read_labelled_images

    rows = [("cat", "Dog"), ("coffee", "dog"), ("rocket", "dog"), ("flower", "cup")]
    assert read_labelled_images(_labels(tmp_path, gallery, rows))[1] == ["dog", "dog", "dog", "cup"]


def test_zeroshot_details_name_each_scored_image_and_its_top_class(gallery, tmp_path, lite) -> None:
    from polymodal.eval.zeroshot import zeroshot_accuracy

    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    names = ["cat", "rocket", "coffee", "flower"]
    images = [gallery / "cat.jpg", broken, gallery / "rocket.jpg", gallery / "coffee.jpg", gallery / "flower.jpg"]
    items: list = []
    out = zeroshot_accuracy(lite, images, ["cat", "cat", "rocket", "coffee", "flower"], details=items)
    # (since stop 45 the unreadable photo has an error item in its place, as eval vqa's and captions' items do)
    assert Path(items[1]["image"]).stem == "broken" and "error" in items[1] and "rank" not in items[1]
    items = items[:1] + items[2:]
    assert out["images"] == 4 and [Path(i["image"]).stem for i in items] == [i["label"] for i in items] == names
    assert all((i["predicted"] == i["label"]) == (i["rank"] == 1) for i in items)
    assert any(i["rank"] == 1 and i["label"] != "cat" for i in items)  # "cat" sorts first among the classes


# -- cli_train.py: eval zeroshot / eval retrieval --------------------------------------------------------------------


@pytest.fixture()
def lite_cli(lite, monkeypatch):
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)


def test_eval_zeroshot_intervals_are_those_of_the_written_ranks(gallery, tmp_path, capsys, caplog, lite_cli) -> None:
    # three photos labelled with another photo's class: top-1 and top-5 differ
    rows = [("cat", "cat"), ("rocket", "rocket"), ("coffee", "coffee"), ("astronaut", "motorcycle"),
            ("motorcycle", "flower"), ("flower", "astronaut"), ("clock", "clock")]
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "zeroshot", "--labels-file", str(_labels(tmp_path, gallery, rows)), "--model", "lite",
                     "--out", str(out), "--ci"]) == 0
    result = _json_out(capsys)
    ranks = np.array([json.loads(line)["rank"] for line in out.read_text().splitlines()])
    assert result["top1"] < result["top5"]
    assert result["top1_ci95"] == bootstrap_ci(ranks <= 1) and result["top5_ci95"] == bootstrap_ci(ranks <= 5)
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "zeroshot", "--labels-file", str(_labels(tmp_path, gallery, rows[:5])), "--model",
                         "lite"]) == 0
    assert "top5 is 1.0 by construction with 5 classes" in caplog.text


def test_eval_retrieval_json_items_and_intervals_agree(gallery, tmp_path, capsys, caplog, lite_cli) -> None:
    names = ["cat", "rocket", "coffee", "astronaut", "motorcycle", "flower"]
    rows = [{"image": str(gallery / f"{n}.jpg"), "caption": c} for n in names for c in (f"a photo of a {n}", n)]
    pairs = _jsonl(tmp_path / "pairs.jsonl", rows + [{"img": "x.jpg", "caption": "no image key"}])
    out = tmp_path / "items.jsonl"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "retrieval", "--pairs", str(pairs), "--model", "lite", "--out", str(out),
                         "--ci"]) == 0
    result = _json_out(capsys)
    assert result["skipped_rows"] == 1 and result["images"] == 6 and result["captions"] == 12
    items = [json.loads(line) for line in out.read_text().splitlines()]
    text = np.array([i["rank"] for i in items if i["query"] == "text"])
    image = np.array([i["rank"] for i in items if i["query"] == "image"])
    photo_of = {"t2i": [i["image"] for i in items if i["query"] == "text"], "i2t": None}  # captions go by photo
    assert len(text) == 12 and len(image) == 6
    for side, ranks in (("t2i", text), ("i2t", image)):
        for k in (1, 5, 10):
            assert result[f"{side}_R@{k}"] == pytest.approx(np.mean(ranks <= k), abs=1e-4)
            assert result[f"{side}_R@{k}_ci95"] == bootstrap_ci(ranks <= k, photo_of[side])
    assert "only 6 photos" in caplog.text
    assert "t2i_R@10 is 1.0 by construction with 6 images and 12 captions" in caplog.text


# -- cli_vqa.py: eval vqa --------------------------------------------------------------------------------------------


class StemVQA:
    """Answers each photo's file name; a photo named broken cannot be read."""

    name = "stem-vqa"

    def answer(self, image, question, choices=None, top_k=3):
        raise AssertionError("eval answers in batches")

    def predict(self, images, questions):
        if any(Path(i).stem == "broken" for i in images):
            raise PolymodalError("cannot read broken.jpg")
        return [(Path(i).stem, 0.9) for i in images]


def test_eval_vqa_counts_skipped_rows_writes_items_and_intervals_over_scored_rows(gallery, tmp_path, capsys, caplog,
                                                                                 monkeypatch) -> None:
    monkeypatch.setattr(polymodal, "load", lambda name, runtime="torch", **kw: StemVQA())
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    photos = {gallery / "cat.jpg": "cat", gallery / "rocket.jpg": "rocket", gallery / "coffee.jpg": "tea", broken: "x"}
    rows = [{"image": str(p), "question": f"question {q}?", "answer": a} for p, a in photos.items() for q in range(6)]
    qa = _jsonl(tmp_path / "qa.jsonl", rows + ["{not json"])
    out = tmp_path / "items.jsonl"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "vqa", "--qa", str(qa), "--model", "stem-vqa", "--out", str(out), "--ci"]) == 0
    result = _json_out(capsys)
    assert result["skipped_rows"] == 1 and result["questions"] == 24 and result["unreadable"] == 6
    items = [json.loads(line) for line in out.read_text().splitlines()]
    scores = [i["score"] for i in items if "score" in i]
    assert len(items) == 24 and len(scores) == 18 and result["accuracy"] == round(np.mean(scores), 4)
    photos = [i["image"] for i in items if "score" in i]  # a photo's questions go together
    assert result["accuracy_ci95"] == bootstrap_ci(scores, photos)  # the unreadable rows are not scored 0
    assert "only 4 photos" in caplog.text  # photos, not the 24 questions about them


# -- eval/captions.py, cli_caption.py --------------------------------------------------------------------------------


class SaysCat:
    def caption(self, images, beam=3, max_tokens=20, **decoding):
        return ["a tabby cat" for _ in images]


def test_evaluate_captions_reads_several_files_and_each_photos_own_references(gallery, tmp_path) -> None:
    from polymodal.eval.captions import evaluate_captions
    from polymodal.eval.retrieval import read_pairs

    a = _jsonl(tmp_path / "a.jsonl", [{"image": str(gallery / "cat.jpg"), "caption": "a tabby cat"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"image": str(gallery / "rocket.jpg"), "caption": "a rocket on the launch pad"}])
    assert evaluate_captions(SaysCat(), [a, b], progress=False)["images"] == 2
    both = _jsonl(tmp_path / "both.jsonl", [json.loads(a.read_text()), json.loads(b.read_text())])
    items: list = []
    evaluate_captions(SaysCat(), read_pairs(both), progress=False, details=items)
    assert [i["references"] for i in items] == [["a tabby cat"], ["a rocket on the launch pad"]]


def test_eval_captions_caveats_cover_the_captioned_photos(gallery, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(polymodal, "load", lambda name, runtime="torch", **kw: SaysCat())
    model = tmp_path / "model"
    write_training_photos(model, _hashes(gallery, "cat", "rocket", "coffee"))
    names = ["cat", "rocket", "coffee"]
    pairs = _jsonl(tmp_path / "pairs.jsonl", [{"image": str(gallery / f"{n}.jpg"), "caption": f"a {n}"} for n in names]
                   + [{"image": str(tmp_path / "missing.jpg"), "caption": "gone"}])
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "captions", "--pairs", str(pairs), "--model", str(model), "--limit", "2",
                     "--out", str(out)]) == 0
    result = _json_out(capsys)
    assert result["skipped_rows"] == 1 and result["seen_in_training"] == 2 and result["images"] == 2
    assert [Path(json.loads(line)["image"]).stem for line in out.read_text().splitlines()] == ["cat", "rocket"]
    capsys.readouterr()  # BLEU and CIDEr-D are corpus scores: no per-photo interval, and the error says why
    assert cli.main(["eval", "captions", "--pairs", str(pairs), "--ci"]) == 2
    assert "corpus scores" in capsys.readouterr().err


# -- the trainers: every saved model gets its training photos, and those of the model it started from ---------------


@pytest.fixture()
def no_training(monkeypatch):
    """Trainer.fit without the training: a validated run saves its model through on_best, as fit does when an
    epoch improves; a run without validation leaves the saving to the trainer."""
    from polymodal.train.trainer import Trainer

    def fit(self, resume=False, on_best=None, on_start=None, score_start=False):
        self.out.mkdir(parents=True, exist_ok=True)
        if on_start is not None:
            on_start()
        if self.eval_fn is not None:
            on_best(self.model)
        return {}

    monkeypatch.setattr(Trainer, "fit", fit)


def _pairs(tmp_path, gallery, names, file="pairs.jsonl") -> Path:
    return _jsonl(tmp_path / file, [{"image": str(gallery / f"{n}.jpg"), "caption": f"a photo of a {n}"}
                                    for n in names])


def _train(*argv) -> None:
    assert cli.main(["train", *map(str, argv), "--quiet", "--epochs", "1"]) == 0


def test_contrastive_runs_record_their_photos_and_inherit_the_start_models(gallery, tmp_path, no_training) -> None:
    first, second = ["cat", "rocket", "coffee"], ["flower", "clock", "moon"]
    _train("contrastive", "--pairs", _pairs(tmp_path, gallery, first), "--val-fraction", "0", "--out", tmp_path / "a")
    assert read_training_photos(tmp_path / "a" / "model") == _hashes(gallery, *first)
    _train("contrastive", "--pairs", _pairs(tmp_path, gallery, second, "b.jsonl"), "--val-pairs",
           _pairs(tmp_path, gallery, first), "--model", tmp_path / "a" / "model", "--out", tmp_path / "b")
    assert read_training_photos(tmp_path / "b" / "model") == _hashes(gallery, *first, *second)


def test_captioner_runs_record_their_photos_and_inherit_the_start_models(gallery, tmp_path, no_training) -> None:
    names = ["cat", "rocket"]
    _train("captioner", "--pairs", _pairs(tmp_path, gallery, names), "--val-fraction", "0", "--out", tmp_path / "a")
    assert read_training_photos(tmp_path / "a" / "model") == _hashes(gallery, *names)
    _train("captioner", "--pairs", _pairs(tmp_path, gallery, names), "--val-pairs", _pairs(tmp_path, gallery, names),
           "--model", "captioner", "--out", tmp_path / "b")
    inherited = read_training_photos("captioner")
    assert read_training_photos(tmp_path / "b" / "model") == _hashes(gallery, *names) | inherited


def test_vqa_runs_record_their_photos_and_inherit_the_start_models(gallery, tmp_path, no_training) -> None:
    names = ["cat", "rocket", "coffee"]
    qa = _jsonl(tmp_path / "qa.jsonl", [{"image": str(gallery / f"{n}.jpg"), "question": q, "answer": n}
                                        for n in names for q in ("what is it?", "what is this?")])
    _train("vqa", "--qa", qa, "--val-fraction", "0", "--dim", "16", "--min-answer-count", "1", "--out", tmp_path / "a")
    assert read_training_photos(tmp_path / "a" / "model") == _hashes(gallery, *names)
    qa2 = _jsonl(tmp_path / "qa2.jsonl", [{"image": str(gallery / "flower.jpg"), "question": "what is it?",
                                           "answer": "cat"}])
    _train("vqa", "--qa", qa2, "--val-qa", qa, "--model", tmp_path / "a" / "model", "--out", tmp_path / "b")
    assert read_training_photos(tmp_path / "b" / "model") == _hashes(gallery, *names, "flower")


def test_pretraining_runs_record_their_photos(gallery, tmp_path, no_training) -> None:
    names = ["cat", "rocket", "coffee"]
    pairs = _pairs(tmp_path, gallery, names)
    common = ["--objectives", "mlm:1", "--dim", "16", "--negatives", "random"]
    _train("pretrain", "--pairs", pairs, "--val-fraction", "0", *common, "--out", tmp_path / "a")
    assert read_training_photos(tmp_path / "a" / "model") == _hashes(gallery, *names)
    _train("pretrain", "--pairs", pairs, "--val-pairs", _pairs(tmp_path, gallery, ["flower"], "v.jsonl"), *common,
           "--out", tmp_path / "b")
    assert read_training_photos(tmp_path / "b" / "model") == _hashes(gallery, *names)


def test_out_names_a_shards_photo_by_its_member_not_its_bytes(gallery, tmp_path, capsys, lite, monkeypatch) -> None:
    import io
    import tarfile

    from polymodal import registry
    from polymodal.eval.captions import evaluate_captions
    from polymodal.eval.retrieval import read_pairs

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        for n in ("cat", "rocket", "coffee"):
            for name, data in ((f"{n}.jpg", (gallery / f"{n}.jpg").read_bytes()), (f"{n}.txt", f"a {n}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    out = tmp_path / "items.jsonl"
    assert cli.main(["eval", "retrieval", "--pairs", str(shard), "--model", "lite", "--out", str(out)]) == 0
    capsys.readouterr()
    names = {json.loads(line)["image"] for line in out.read_text().splitlines()}
    assert names == {f"{shard}#{n}.jpg" for n in ("cat", "rocket", "coffee")}

    class Says:
        def caption(self, images, **kw):
            return ["a photo"] * len(images)

    items: list = []
    result = evaluate_captions(Says(), read_pairs(shard), progress=False, details=items)
    assert {i["image"] for i in items} == names and result["examples"][0]["image"] in names
