"""A fusion encoder's config belongs to it: building one, or a training recipe, leaves the caller's config as it
was; the recipe's mrm_target and the arch's mrm_head cannot contradict each other; freeze takes "a,b"."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from pathlib import Path

from polymodal.errors import PolymodalError
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
from polymodal.train import pretrain
from polymodal.train.pretrain import PretrainRecipe
from polymodal.train.vqa import VQARecipe

ROOT = Path(__file__).resolve().parents[1]


def test_building_a_model_leaves_the_callers_config_alone():
    config = FusionEncoderConfig(fusion="cross_attention", dim=16, answers=["yes", "no"])
    before = dataclasses.asdict(config)
    model = FusionEncoder(config)
    assert model.config.fusion_options == {"query": 1}  # the model's own default: text queries the grid
    model.add_vqa_head(["red", "blue"])
    model.add_itm_head()
    assert dataclasses.asdict(config) == before
    assert model.config.answers == ["red", "blue"] and model.config.itm_head


def test_mrm_target_and_mrm_head_name_one_thing(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrain, "FusionEncoder", lambda arch: SimpleNamespace(config=arch))
    objectives = {"itm": 1.0, "mrm": 1.0}
    # the arch's head alone decides; mrm_target alone decides; neither: regress
    for arch_head, target, built in (("classify", "", "classify"), ("", "classify", "classify"), ("", "", "regress"),
                                     ("regress", "regress", "regress")):
        recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), objectives=objectives, mrm_target=target,
                                arch={"fusion": "co_attention", "mrm_head": arch_head})
        recipe.validate()
        assert pretrain.build_model(recipe).config.mrm_head == built
    recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), objectives=objectives, mrm_target="regress",
                            arch={"fusion": "co_attention", "mrm_head": "classify"})
    recipe.validate()
    with pytest.raises(PolymodalError, match=r"mrm_target 'regress' contradicts arch mrm_head \('classify'\)"):
        pretrain.build_model(recipe)
    # a run recorded before stop 31 saved mrm_target "regress" beside any head: resumed, it is rebuilt as recorded
    assert pretrain.build_model(recipe, resume=True).config.mrm_head == "classify"


def test_freezing_a_part_the_model_lacks_is_an_error():
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, answers=["yes", "no"]))
    with pytest.raises(PolymodalError, match="this model has no mrm, itm part to freeze.*freeze parts it has: "
                                             "image_proj, text_proj, projections, fusion, vqa$"):
        model.freeze(["fusion", "mrm", "itm"])
    assert all(p.requires_grad for p in model.fusion.parameters())  # refused before anything was frozen
    assert model.freeze("projections")  # image_proj and text_proj; pixel_proj absent is fine


def test_resuming_with_other_frozen_parts_is_refused(tmp_path):
    import json

    from polymodal.train.run_settings import check_same_run
    from polymodal.train.trainer import TrainConfig

    arch, train = FusionEncoderConfig(fusion="concat", dim=16), TrainConfig()
    (tmp_path / "train_config.json").write_text(json.dumps({"arch": dataclasses.asdict(arch), "freeze": ["itm"],
                                                            "train": dataclasses.asdict(train)}))
    check_same_run(tmp_path, arch, train, freeze=["itm"])
    with pytest.raises(PolymodalError, match=r"--freeze itm \(asked now: text_proj\)"):
        check_same_run(tmp_path, arch, train, freeze=["text_proj"])
    with pytest.raises(PolymodalError, match=r'--freeze itm \(asked now: ""\)'):
        check_same_run(tmp_path, arch, train, freeze=[])


def test_recipes_build_from_a_copy_and_read_freeze_as_flags_give_it(tmp_path):
    arch = FusionEncoderConfig(fusion="cross_attention", dim=16)
    recipe = VQARecipe(qa="qa.jsonl", out=str(tmp_path), arch=arch, freeze="projections, fusion,")
    assert recipe.freeze == ["projections", "fusion"]
    assert PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), freeze="fusion").freeze == ["fusion"]
    from polymodal.eval.vqa import QARow
    from polymodal.train.vqa import build_vqa_model

    rows = [QARow("a.jpg", "is it red?", "yes"), QARow("b.jpg", "is it red?", "no")]
    model = build_vqa_model(recipe, rows)
    assert arch.answers == [] and arch.fusion_options == {}  # the caller's config, as it was
    assert sorted(model.answers) == ["no", "yes"] and recipe.arch is model.config
    assert not any(p.requires_grad for p in model.fusion.parameters())
    assert all(p.requires_grad for p in model.vqa_head.parameters())


@pytest.mark.parametrize("recipe_path, key", [("polymodal.train.vqa:VQARecipe", "qa"),
                                              ("polymodal.train.pretrain:PretrainRecipe", "pairs"),
                                              ("polymodal.train.contrastive:ContrastiveRecipe", "val_pairs"),
                                              ("polymodal.train.captioning:CaptionRecipe", "pairs")])
def test_recipes_given_rows_in_memory_say_to_write_a_file(recipe_path, key, tmp_path):
    import importlib

    module, name = recipe_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    data = {"qa" if key == "qa" else "pairs": "data.jsonl"}
    rows = [{"image": "a.jpg", "caption": "a cat", "question": "what?", "answer": "cat"}]
    with pytest.raises(PolymodalError, match=f"^{key} takes data files, not rows: write the rows to a JSONL file"):
        cls(out=str(tmp_path), **{**data, key: rows})


def test_train_vqa_continues_the_built_in_easy_vqa_by_name(tmp_path, capsys):
    import json

    from polymodal import cli
    from polymodal.training_photos import read_training_photos

    easy_vqa = pytest.importorskip("easy_vqa")
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"image": str(paths[i]), "question": q, "answer": a}) + "\n"
                          for q, a, i in list(zip(questions, answers, image_ids))[:40]))
    out = tmp_path / "run"
    assert cli.main(["train", "vqa", "--qa", str(qa), "--val-qa", str(qa), "--model", "easy-vqa", "--out", str(out),
                     "--epochs", "1", "--quiet"]) == 0
    config = json.loads((out / "train_config.json").read_text())
    saved = json.loads((out / "model" / "config.json").read_text())
    assert config["model"] == "easy-vqa" and saved["answers"] == json.loads(
        (ROOT / "polymodal/resources/models/easy-vqa/config.json").read_text())["answers"]
    assert read_training_photos(out / "model") >= read_training_photos("easy-vqa")  # inherited, plus these
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(paths[i]), "caption": f"shape {i}"}) + "\n" for i in range(4)))
    for task, data in (("vqa", ["--qa", str(qa)]), ("pretrain", ["--pairs", str(pairs)])):
        assert cli.main(["train", task, *data, "--model", "coco-yesno", "--out", str(tmp_path / task)]) == 2
        assert f"the built-in 'coco-yesno' is not a fusion encoder, so `polymodal train {task}`" in \
            capsys.readouterr().err


def test_no_question_encodes_to_an_empty_batch():
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, answers=["yes", "no"]))
    states, mask = model.encode_questions([])
    assert states.shape == (0, 1, 384) and mask.shape == (0, 1) and mask.dtype == torch.bool
    assert model.encode_images([]).shape[0] == 0
