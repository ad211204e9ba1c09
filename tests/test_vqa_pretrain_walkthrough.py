"""A new user training `polymodal train vqa` and `polymodal train pretrain` on their own data, as the fine-tune
walkthrough (test_finetune_walkthrough.py) does for `train contrastive`: corrupt files in the data, Ctrl-C and
`--out RUN --resume` alone (from another folder), resuming with another architecture. Tiny runs over the sample
gallery (features cached once per test session)."""

import json
import logging
import os
import shutil

import pytest

from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa
from polymodal.train.metrics import read_metrics
from polymodal.train.pretrain import PretrainRecipe, train_pretrain
from polymodal.train.vqa import VQARecipe, train_vqa
from tests import test_pretrain, test_vqa
from tests.test_finetune_walkthrough import _run

qa_file, pairs_file = test_vqa.qa_file, test_pretrain.pairs_file  # their tiny data sets over the sample gallery

VQA = ["--quiet", "--dim", "32", "--batch-size", "8", "--warmup-steps", "1", "--patience", "0"]
PRETRAIN = ["--quiet", "--dim", "32", "--batch-size", "16", "--warmup-steps", "1", "--patience", "0",
            "--negatives", "random", "--objectives", "itm:1,mlm:1,mrm:0.5"]


def _with_broken_images(source, folder, key):
    """``source`` rows with absolute image paths plus a truncated JPEG and a file that is no image."""
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    rows = [{**r, "image": str(source.parent / r["image"])} for r in rows]
    whole = (source.parent / "cat.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "garbage.jpg").write_bytes(b"not a jpeg")
    rows += [{**rows[0], "image": "truncated.jpg"}, {**rows[1], "image": "garbage.jpg"}]
    path = folder / f"mine-{key}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_vqa_leaves_unreadable_images_out(qa_file, tmp_path, caplog):
    """A truncated JPEG or a file that is no image used to end `train vqa` with 'not a readable image'."""
    data = _with_broken_images(qa_file, tmp_path, "qa")
    with caplog.at_level(logging.WARNING):
        assert _run(["train", "vqa", "--qa", data, "--val-qa", data, "--out", tmp_path / "run", "--epochs", "1",
                     *VQA]) == 0
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["train_images"] == 15 and config["val_questions"] == config["train_questions"] == 45
    assert "left out 2 unreadable images" in caplog.text and "truncated.jpg" in caplog.text


def test_pretrain_leaves_unreadable_images_out(pairs_file, tmp_path, caplog):
    data = _with_broken_images(pairs_file, tmp_path, "pairs")
    with caplog.at_level(logging.WARNING):
        assert _run(["train", "pretrain", "--pairs", data, "--val-pairs", data, "--out", tmp_path / "run",
                     "--epochs", "1", *PRETRAIN]) == 0
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["train_images"] == 15 and config["val_captions"] == config["train_captions"] == 45
    assert "left out 2 unreadable images" in caplog.text and "truncated.jpg" in caplog.text


def test_blank_question_or_answer_rows_are_skipped(qa_file, tmp_path):
    """A question of spaces, or an answer of spaces or a lone full stop, used to become a row (the blank answer a
    class of the vocabulary)."""
    image = str(qa_file.parent / "cat.jpg")
    rows = [{"image": image, "question": "   ", "answer": "yes"}, {"image": image, "question": "is it?", "answer": " "},
            {"image": image, "question": "is it?", "answer": "."}, {"image": image, "question": "is it?", "answer": "yes"}]
    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(r.question, r.answer) for r in read_qa(path)] == [("is it?", "yes")]


@pytest.fixture(scope="module", params=["vqa", "pretrain"])
def run(request, qa_file, pairs_file, tmp_path_factory):
    """A one-epoch run started from its own folder with relative paths: (command, run folder, data flags)."""
    command = request.param
    folder = tmp_path_factory.mktemp(f"walk-{command}")
    data, flags = (qa_file, ["--qa", "mine.jsonl", *VQA, "--freeze", "text_proj"]) if command == "vqa" else \
        (pairs_file, ["--pairs", "mine.jsonl", *PRETRAIN])
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    (folder / "mine.jsonl").write_text("".join(
        json.dumps({**r, "image": str(data.parent / r["image"])}) + "\n" for r in rows))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert _run(["train", command, "--out", "run", "--epochs", "1", "--val-fraction", "0.2", *flags]) == 0
    finally:
        os.chdir(cwd)
    return command, folder / "run", [flags[0], folder / "mine.jsonl"]


def test_resume_alone_from_another_folder_continues_the_run(run, tmp_path, monkeypatch):
    """After Ctrl-C, `--out RUN --resume` used to demand --qa / --pairs again, and train_config.json kept the data
    paths as typed (relative to the folder the run started in)."""
    command, started, _ = run
    out = tmp_path / "run"
    shutil.copytree(started, out)
    monkeypatch.chdir(tmp_path)
    assert _run(["train", command, "--out", "run", "--resume", "--epochs", "2", "--quiet"]) == 0
    assert [r["epoch"] for r in read_metrics(out) if r["split"] == "val"] == [1, 2]
    config = json.loads((out / "train_config.json").read_text())
    assert config["arch"]["dim"] == 32 and config["batch_size"] in (8, 16) and config["train"]["epochs"] == 2
    assert config["qa" if command == "vqa" else "pairs"] == [str(started.parent / "mine.jsonl")]


def test_resume_with_another_architecture_is_one_line_and_writes_nothing(run, capsys):
    """It used to rewrite train_config.json with the new --dim, then fail on the checkpoint."""
    command, out, data = run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert _run(["train", command, *data, "--out", out, "--resume", "--epochs", "2", "--dim", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "--dim 32 (asked now: 64)" in err and "train_config.json" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_resume_with_another_fusion_names_the_fusion(run, capsys):
    """It said "gated fusion has no option 'query'" (the run's cross-attention options given to the new fusion)."""
    command, out, data = run
    fusion = json.loads((out / "train_config.json").read_text())["arch"]["fusion"]
    other = "gated" if fusion != "gated" else "concat"
    capsys.readouterr()
    # --epochs 2: the run trained 1, and a finished run is refused first (before the data is read)
    assert _run(["train", command, *data, "--out", out, "--resume", "--fusion", other, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--fusion {fusion} (asked now: {other})" in err and err.count("\n") == 1, err


def test_a_refused_resume_keeps_the_runs_settings(run, capsys):
    """`--resume` with nothing left to train is refused; train_config.json used to be rewritten first (here with
    settings that never ran)."""
    command, out, data = run
    before = (out / "train_config.json").read_text()
    assert _run(["train", command, *data, "--out", out, "--resume", "--epochs", "1", "--log-every", "7", "--quiet"]) == 2
    assert "already trained 1 epochs" in capsys.readouterr().err
    assert (out / "train_config.json").read_text() == before
    # another learning rate would be recorded but not used (the optimizer state brings the old one back): refused
    assert _run(["train", command, *data, "--out", out, "--resume", "--epochs", "2", "--lr", "0.5", "--quiet"]) == 2
    assert "was trained with --lr 0.001 (asked now: 0.5)" in capsys.readouterr().err
    assert (out / "train_config.json").read_text() == before


def test_checkpoint_of_another_architecture_names_what_differs(run, tmp_path):
    """Without train_config.json (or from Python) the checkpoint load is the check; its message used to end at
    torch's first line, 'Error(s) in loading state_dict for FusionEncoder:'."""
    command, started, _ = run
    out = tmp_path / "run"
    shutil.copytree(started, out)
    (out / "train_config.json").unlink()
    # the run's own split (0.2): the same answers, so the architecture is the one difference
    data, settings = [str(started.parent / "mine.jsonl")], {"out": str(out), "val_fraction": 0.2,
                                                             "arch": {"dim": 64}, "train": {"epochs": 2}}
    recipe, train = (VQARecipe(qa=data, **settings), train_vqa) if command == "vqa" else \
        (PretrainRecipe(pairs=data, negatives="random", **settings), train_pretrain)
    with pytest.raises(PolymodalError, match="does not fit this model \\(size mismatch for"):
        train(recipe, resume=True, progress=False)
