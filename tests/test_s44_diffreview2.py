"""Review of stop 44's training and fusion changes (helper diffreview2)."""

from __future__ import annotations

import json

import pytest
import torch

from polymodal.errors import PolymodalError


def test_zeroshot_tower_outputs_too_large_to_keep_stop_after_the_first_batch(gallery, monkeypatch):
    # above MAX_BYTES each epoch scores with the whole pass; the kept pass ran the image tower over every labelled
    # photo first (and held all its outputs twice) before finding them too large, then threw it away
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
    from polymodal.train.contrastive import ZeroShotTowerOutputs

    photos = sorted(gallery.glob("*.jpg"))
    images = [photos[i % len(photos)] for i in range(33)]  # two batches of 32
    labels = ["even" if i % 2 else "odd" for i in range(33)]
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig(embed_dim=16)).eval()
    seen = []
    spatial = model.image_tower.spatial
    monkeypatch.setattr(model.image_tower, "spatial", lambda pixels: seen.append(len(pixels)) or spatial(pixels))
    monkeypatch.setattr(ZeroShotTowerOutputs, "MAX_BYTES", 1024)  # one batch of pooled features passes it
    kept = ZeroShotTowerOutputs(images, labels)
    with torch.no_grad():
        assert kept.score(model) is None and kept.off
    assert sum(seen) == 32


def _qa(gallery, tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(gallery / f"{n}.jpg"), "question": "what is it?", "answer": n})
                          + "\n" for n in ["cat", "rocket", "coffee", "moon"]))
    return qa


def test_a_python_resume_of_a_late_run_recorded_before_decision_heads_keeps_its_heads(gallery, tmp_path):
    # the CLI's --resume reads a train_config.json without decision_heads as false; a recipe built in Python took
    # the new default (true) and loaded the checkpoint, trained with the head over the averaged decision, into
    # decision-level heads without a word (same tensor shapes)
    from polymodal.train.vqa import VQARecipe, train_vqa

    qa, out = _qa(gallery, tmp_path), tmp_path / "run"

    def recipe(epochs: int, **arch) -> VQARecipe:
        # no validation: RUN/model is the last epoch's (with it, an epoch 2 scoring lower kept epoch 1's model)
        return VQARecipe(qa=str(qa), val_fraction=0, out=str(out), arch={"fusion": "late", "dim": 16, **arch},
                         train={"epochs": epochs}, batch_size=2)

    train_vqa(recipe(1), progress=False)
    config = json.loads((out / "train_config.json").read_text())
    del config["arch"]["decision_heads"]  # as a run started before stop 44 recorded it
    (out / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(PolymodalError, match=r"\"decision_heads\": false \(a --config key; asked now: true\)"):
        train_vqa(recipe(2), resume=True, progress=False)
    train_vqa(recipe(2, decision_heads=False), resume=True, progress=False)
    assert json.loads((out / "model" / "config.json").read_text())["decision_heads"] is False


def test_a_run_of_another_fusion_recorded_before_decision_heads_resumes_as_before(tmp_path):
    # decision_heads changes nothing but late fusion: a concat run recorded without it is not refused
    from polymodal.models.fusion_encoder import FusionEncoderConfig
    from polymodal.train.run_settings import check_same_run
    from polymodal.train.trainer import TrainConfig

    for fusion, refused in (("concat", False), ("late", True)):
        arch = FusionEncoderConfig(fusion=fusion, dim=16)
        saved = json.loads(json.dumps({"arch": {k: v for k, v in vars(arch).items() if k != "decision_heads"},
                                       "train": vars(TrainConfig())}))
        (tmp_path / "train_config.json").write_text(json.dumps(saved))
        if refused:
            with pytest.raises(PolymodalError, match="\"decision_heads\": false"):
                check_same_run(tmp_path, arch, TrainConfig())
        else:
            check_same_run(tmp_path, arch, TrainConfig())


def test_decision_heads_asked_of_a_late_model_saved_before_the_setting_is_refused(gallery, tmp_path, capsys):
    # --model keeps the folder's architecture, and a setting that differs is refused rather than ignored; a late
    # model saved before stop 44 has no decision_heads (it loads false), so "decision_heads": true was ignored
    from polymodal import cli

    qa = _qa(gallery, tmp_path)
    base = ["train", "vqa", "--qa", str(qa), "--batch-size", "2", "--quiet", "--epochs", "1"]
    assert cli.main([*base, "--out", str(tmp_path / "old"), "--fusion", "late", "--dim", "16"]) == 0
    folder = tmp_path / "old" / "model"
    config = json.loads((folder / "config.json").read_text())
    del config["decision_heads"]  # as a model saved before stop 44 wrote it
    (folder / "config.json").write_text(json.dumps(config))
    for value, refused in ((True, True), (False, False)):
        recipe = tmp_path / f"recipe-{value}.json"
        recipe.write_text(json.dumps({"arch": {"decision_heads": value}}))
        args = [*base, "--out", str(tmp_path / f"new-{value}"), "--model", str(folder), "--config", str(recipe)]
        if refused:
            assert cli.main(args) != 0
            assert "keeps its own architecture (decision_heads False)" in capsys.readouterr().err
            assert not (tmp_path / f"new-{value}").exists()
        else:
            assert cli.main(args) == 0
