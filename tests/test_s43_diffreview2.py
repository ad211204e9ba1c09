"""Review of `train --split/--val-split`, the CPU quota and the diff-review fixes (stop 43, diffreview2)."""

import json

import pytest

from polymodal.cli import main
from polymodal.errors import PolymodalError
from test_s43_train_split import _karpathy as karpathy_file  # 12 photos: train 6, restval 2, val 2, test 2


def _karpathy(tmp_path):
    return karpathy_file(tmp_path)[0]


def test_val_split_without_a_validation_file_is_refused_not_ignored(tmp_path, monkeypatch, capsys):
    # it validated on a --val-fraction split of the training rows, without a word
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    path, run = _karpathy(tmp_path), tmp_path / "run"
    code = main(["train", "contrastive", "--pairs", str(path), "--split", "train,restval", "--val-split", "val",
                 "--epochs", "1", "--embed-dim", "8", "--batch-size", "4", "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "no --val-pairs is given" in err, err
    assert not run.exists()


@pytest.mark.parametrize("recipe", ["vqa", "captioning", "pretrain"])
def test_every_recipe_refuses_a_lone_val_split(recipe, tmp_path):
    if recipe == "vqa":
        from polymodal.train.vqa import VQARecipe as cls
        settings, flag = {"qa": str(tmp_path / "qa.jsonl")}, "--val-qa"
    elif recipe == "captioning":
        from polymodal.train.captioning import CaptionRecipe as cls
        settings, flag = {"pairs": str(tmp_path / "p.jsonl")}, "--val-pairs"
    else:
        from polymodal.train.pretrain import PretrainRecipe as cls
        settings, flag = {"pairs": str(tmp_path / "p.jsonl")}, "--val-pairs"
    with pytest.raises(PolymodalError, match=f"no {flag} is given"):
        cls.from_dict({**settings, "out": str(tmp_path / "run"), "val_split": "val"}).validate()
    val_key, data = ("val_qa", settings.get("qa")) if recipe == "vqa" else ("val_pairs", settings.get("pairs"))
    cls.from_dict({**settings, "out": str(tmp_path / "run"), "val_split": "val", val_key: data}).validate()


def test_mixed_splits_warning_names_the_validation_file_with_val_split(tmp_path, caplog):
    from polymodal.data.pairs import read_pair_sources

    path = _karpathy(tmp_path)
    read_pair_sources([path])
    warning = next(r.getMessage() for r in caplog.records if "split values" in r.getMessage())
    assert "--val-pairs" in warning and "--val-split val" in warning, warning


@pytest.mark.parametrize("saved, now, warned", [("train", "train,restval", True), ("", "train", True),
                                               ("train,restval", "Restval, train", False), ("train", None, False)])
def test_resume_with_another_split_says_so_as_other_pairs_do(tmp_path, caplog, saved, now, warned):
    """--resume on other rows of the same file (another --split) is another curve, as another --pairs file is:
    that one is warned about, this one was silent."""
    import logging

    from polymodal.cli_train import with_run_settings
    from polymodal.train.contrastive import ContrastiveRecipe

    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"pairs": ["/data/k.json"], "split": saved, "arch": {},
                                                       "train": {}}))
    settings = {"out": str(run), "arch": {}, "train": {}, **({"split": now} if now is not None else {})}
    with caplog.at_level(logging.WARNING):
        merged = with_run_settings(settings, ContrastiveRecipe)
    assert merged["split"] == (saved if now is None else now)
    assert ("--resume with --split" in caplog.text) is warned, caplog.text
