"""A training run's validation photos chose the epoch it kept, so figures on them are optimistic too: they are
recorded beside the model (as "val HASH" lines of training_photos.txt) and `eval` counts them apart
(`seen_in_validation`), with a warning. Before, `eval retrieval --pairs VAL.jsonl` on the run's own --val-pairs
printed its figures as if held out."""

import json
import logging

from test_s30_audit import _hashes, _jsonl, _pairs, _train, no_training  # noqa: F401 - no_training is a fixture

from polymodal import cli
from polymodal.eval.caveats import data_caveats
from polymodal.training_photos import (FILE_NAME, VAL, TrainingPhotos, photo_hash,
                                       read_training_photos, read_validation_photos, write_training_photos)

TRAIN, VALIDATION = ["cat", "rocket", "coffee"], ["flower", "clock"]


def test_the_file_keeps_validation_photos_apart_and_a_trained_photo_counts_as_trained(gallery, tmp_path) -> None:
    write_training_photos(tmp_path, _hashes(gallery, "cat"), _hashes(gallery, "cat", "flower"))
    assert read_training_photos(tmp_path) == _hashes(gallery, "cat")
    assert read_validation_photos(tmp_path) == _hashes(gallery, "flower")
    lines = (tmp_path / FILE_NAME).read_text().splitlines()
    assert f"{VAL}{photo_hash(gallery / 'flower.jpg')}" in lines  # what an older reader sees: a hash nothing matches
    write_training_photos(tmp_path / "plain", _hashes(gallery, "cat"))  # (the folder is made by the atomic write)
    assert read_validation_photos(tmp_path / "plain") == set()
    assert read_validation_photos(tmp_path / "nothing") is None


def test_contrastive_runs_record_their_validation_photos_and_a_continued_run_trains_on_them(
        gallery, tmp_path, no_training) -> None:  # noqa: F811
    _train("contrastive", "--pairs", _pairs(tmp_path, gallery, TRAIN), "--val-pairs",
           _pairs(tmp_path, gallery, VALIDATION, "val.jsonl"), "--out", tmp_path / "a")
    assert read_training_photos(tmp_path / "a" / "model") == _hashes(gallery, *TRAIN)
    assert read_validation_photos(tmp_path / "a" / "model") == _hashes(gallery, *VALIDATION)
    # continued on its validation photos, validated on a new one: those are now trained on, "moon" chose the epoch
    _train("contrastive", "--pairs", _pairs(tmp_path, gallery, VALIDATION, "b.jsonl"), "--val-pairs",
           _pairs(tmp_path, gallery, ["moon"], "bv.jsonl"), "--model", tmp_path / "a" / "model", "--out", tmp_path / "b")
    assert read_training_photos(tmp_path / "b" / "model") == _hashes(gallery, *TRAIN, *VALIDATION)
    assert read_validation_photos(tmp_path / "b" / "model") == _hashes(gallery, "moon")


def test_a_run_without_validation_records_none(gallery, tmp_path, no_training) -> None:  # noqa: F811
    _train("contrastive", "--pairs", _pairs(tmp_path, gallery, TRAIN), "--val-fraction", "0", "--out", tmp_path / "a")
    assert read_validation_photos(tmp_path / "a" / "model") == set()


def test_vqa_pretraining_and_captioner_runs_record_their_validation_photos(gallery, tmp_path, no_training) -> None:  # noqa: F811
    qa = [{"image": str(gallery / f"{n}.jpg"), "question": q, "answer": n} for n in TRAIN for q in ("what?", "which?")]
    val_qa = [{"image": str(gallery / f"{n}.jpg"), "question": "what?", "answer": "cat"} for n in VALIDATION]
    _train("vqa", "--qa", _jsonl(tmp_path / "qa.jsonl", qa), "--val-qa", _jsonl(tmp_path / "vq.jsonl", val_qa),
           "--dim", "16", "--min-answer-count", "1", "--out", tmp_path / "vqa")
    val_pairs = _pairs(tmp_path, gallery, VALIDATION, "val.jsonl")
    _train("pretrain", "--pairs", _pairs(tmp_path, gallery, TRAIN), "--val-pairs", val_pairs, "--objectives",
           "mlm:1", "--dim", "16", "--negatives", "random", "--out", tmp_path / "pretrain")
    _train("captioner", "--pairs", _pairs(tmp_path, gallery, TRAIN), "--val-pairs", val_pairs, "--out",
           tmp_path / "captioner")
    for run in ("vqa", "pretrain", "captioner"):
        assert read_validation_photos(tmp_path / run / "model") == _hashes(gallery, *VALIDATION), run
        assert read_training_photos(tmp_path / run / "model") >= _hashes(gallery, *TRAIN), run


def test_eval_counts_and_warns_of_validation_photos_apart(gallery, tmp_path, caplog) -> None:
    class SavesConfig:
        def save(self, folder):
            folder.mkdir(parents=True, exist_ok=True)

    TrainingPhotos([gallery / "cat.jpg"], val_images=[gallery / "flower.jpg"]).save(SavesConfig(), tmp_path / "m")
    model = str(tmp_path / "m")
    photos = [gallery / f"{n}.jpg" for n in ("cat", "flower", "rocket")]
    with caplog.at_level(logging.WARNING):
        caveats = data_caveats(model, photos, 0)
    assert (caveats["seen_in_training"], caveats["seen_in_validation"]) == (1, 1)
    assert "validation photos that chose the epoch" in caplog.text
    assert data_caveats("lite", photos, 0)["seen_in_validation"] is None  # records nothing: unknown, not 0


def test_eval_retrieval_on_the_runs_own_validation_pairs_says_so(gallery, tmp_path, no_training, capsys,  # noqa: F811
                                                                 caplog) -> None:
    val = _pairs(tmp_path, gallery, VALIDATION, "val.jsonl")
    _train("contrastive", "--pairs", _pairs(tmp_path, gallery, TRAIN), "--val-pairs", val, "--out", tmp_path / "a")
    capsys.readouterr()
    items = tmp_path / "items.jsonl"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "retrieval", "--pairs", str(val), "--model", str(tmp_path / "a" / "model"),
                         "--out", str(items)]) == 0
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["seen_in_training"], line["seen_in_validation"]) == (0, 2)
    assert "validation photos that chose the epoch" in caplog.text
    rows = [json.loads(r) for r in items.read_text().splitlines()]
    assert rows and all(r["seen_in_validation"] is True and r["seen_in_training"] is False for r in rows)
