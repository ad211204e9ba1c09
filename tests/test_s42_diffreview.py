"""Review of stop 42's own changes (diffreview): regressions the day's checks brought for input that used to work."""

import json
import os
import shutil

import pytest
from PIL import Image

import test_s42_contrastive
from polymodal import cli

data, _train = test_s42_contrastive.data, test_s42_contrastive._train  # (data: a fixture)


def test_resume_takes_the_starting_model_from_where_it_was_moved(data, tmp_path, capsys):
    """A run continued from a model folder that has moved since: the recorded path is gone (without --model the
    run cannot load it), so --model names its new place. It was refused as "another --model" than the run's, which
    left no way to resume. The same folder through a symlink is the same model."""
    start = tmp_path / "start"
    assert cli.main(_train(data, start, "--epochs", "1", "--val-pairs", data["pairs"])) == 0
    run = tmp_path / "run"
    assert cli.main(_train(data, run, "--epochs", "1", "--val-pairs", data["pairs"], "--model", start / "model")) == 0
    shutil.move(start, tmp_path / "moved")
    capsys.readouterr()
    resume = ["train", "contrastive", "--out", str(run), "--resume", "--quiet"]
    assert cli.main([*resume, "--epochs", "2", "--model", str(tmp_path / "moved" / "model")]) == 0, \
        capsys.readouterr().err
    assert json.loads((run / "train_config.json").read_text())["model"] == str(tmp_path / "moved" / "model")
    os.symlink(tmp_path / "moved", tmp_path / "link")
    assert cli.main([*resume, "--epochs", "3", "--model", str(tmp_path / "link" / "model")]) == 0, \
        capsys.readouterr().err
    # another model, while the run's own is still there, is refused as before
    _ = capsys.readouterr()
    assert cli.main([*resume, "--epochs", "4", "--model", "lite"]) == 2
    assert "was trained with --model" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["qdrant-2024-05-01T10:30:00", "snapshots-10:30:05"])
def test_a_new_qdrant_folder_named_with_a_time_stays_a_folder(folder, tmp_path, monkeypatch):
    """--qdrant FOLDER for Qdrant's local mode, not made yet: a name holding a time (host:port-like only in part)
    was refused as a server address; it was a folder before the address check."""
    from polymodal.errors import PolymodalError
    from polymodal.index.qdrant import QdrantCollection

    monkeypatch.chdir(tmp_path)
    assert not QdrantCollection(folder).remote
    for address in ("http:/host", "grpc://host:6334", "localhost:6333/", "host:6333/collections"):
        with pytest.raises(PolymodalError, match="looks like a server address"):
            QdrantCollection(address)


def test_a_jsonl_naming_a_photo_whose_name_is_not_utf8_still_reads_it(tmp_path):
    """json.dumps of a name os.listdir gives for Latin-1 bytes ("caf\\xe9.png") writes "caf\\udce9.png", which
    open() finds: such rows were read before the half-surrogate check, which now skipped them as "not valid
    Unicode". A half surrogate that is no file-name byte ("\\ud83d") is still a skipped row, and so is one in a
    caption (no tokenizer takes it)."""
    from polymodal.data.pairs import read_pair_sources
    from polymodal.eval.vqa import read_qa
    from polymodal.eval.zeroshot import read_labelled_images

    name = os.fsdecode(b"caf\xe9.png")
    for i, photo in enumerate((name, "b.png", "c.png")):
        Image.new("RGB", (32, 32), (80 * i, 20, 30)).save(tmp_path / photo)
    rows = [{"image": name, "caption": "a red cafe"}, {"image": "b.png", "caption": "a blue thing"},
            {"image": "\ud83d.png", "caption": "cut"}, {"image": "c.png", "caption": "cut \ud83d"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_pair_sources([str(tmp_path / "pairs.jsonl")])
    assert sorted(os.path.basename(str(p)) for p in pairs.images) == sorted([name, "b.png"])

    (tmp_path / "labels.jsonl").write_text("".join(json.dumps({"image": r["image"], "label": label}) + "\n"
                                                   for r, label in zip(rows[:2], ("cafe", "thing"))))
    assert len(read_labelled_images(tmp_path / "labels.jsonl")[0]) == 2
    (tmp_path / "qa.jsonl").write_text(json.dumps({"image": name, "question": "what?", "answer": "cafe"}) + "\n")
    assert len(read_qa(tmp_path / "qa.jsonl")) == 1


def test_fusion_compare_takes_a_coco_yesno_file_under_home(tmp_path, monkeypatch):
    """--coco-yesno=~/qa.jsonl (no shell expands a ~ after '='): read_qa expands it, and it was read; the new
    up-front check looked for a folder named "~" and stopped with "coco-yesno needs ..."."""
    from test_s40_bench_missing_data import _main

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "qa.jsonl").write_text('{"image": "a.jpg", "question": "is it red?", "answer": "yes"}\n')
    module = _main("fusion_compare")

    class Reached(Exception):
        pass

    def prepare(root, source, *args):
        assert source.expanduser() == tmp_path / "qa.jsonl"
        raise Reached

    monkeypatch.setattr(module, "prepare_coco_yesno", prepare)
    with pytest.raises(Reached):
        module.main(["--datasets", "coco-yesno", "--coco-yesno=~/qa.jsonl", "--quick", "--quiet",
                     "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs")])
