"""What a researcher using polymodal from Python tripped over (helper walkthrough, stop 14): recall that rated a
collapsed model perfect, inference that switched dropout off for the rest of training, inputs silently misread
(one question read as its characters), and errors from deep inside torch instead of one that names the mistake."""

import shutil

import numpy as np
import pytest
import torch

import polymodal
from polymodal.errors import PolymodalError


# -- retrieval metrics ---------------------------------------------------------------------------------------------
def test_a_collapsed_or_diverged_model_has_no_recall():
    from polymodal.eval.retrieval import retrieval_metrics

    caption_image = np.repeat(np.arange(4), 2)
    same = retrieval_metrics(np.ones((4, 8)), np.ones((8, 8)), caption_image)  # every score ties
    assert same["t2i_R@1"] == 0.0 and same["i2t_R@1"] == 0.0 and same["t2i_median_rank"] == 4
    good = np.eye(4, 8)
    nan = retrieval_metrics(good * np.nan, good[caption_image], caption_image)
    assert nan["t2i_R@1"] == 0.0 and nan["i2t_R@1"] == 0.0
    assert retrieval_metrics(good, good[caption_image], list(caption_image))["t2i_R@1"] == 1.0  # a list is fine


@pytest.mark.parametrize("caption_image", [[0, 1, 2, -1], [0, 1, 2, 4], [0, 1, 2], [0.0, 1.0, 2.0, 3.0]])
def test_caption_image_must_index_the_images(caption_image):
    from polymodal.eval.retrieval import retrieval_metrics

    good = np.eye(4, 8)
    with pytest.raises(PolymodalError, match="caption_image must hold one image row index"):
        retrieval_metrics(good, good, caption_image)


# -- train/eval mode -----------------------------------------------------------------------------------------------
def test_answering_mid_training_leaves_the_model_training(easy_vqa, gallery):
    image = str(next(gallery.glob("*.jpg")))
    try:
        easy_vqa.train()
        easy_vqa.answer(image, "what shape is it?")
        easy_vqa.predict([image], ["what colour is it?"])
        easy_vqa.explain(image, "what shape is it?")
        assert easy_vqa.training and easy_vqa.vqa_head.training and easy_vqa.drop.training
        assert not easy_vqa.image_tower.training  # frozen towers stay in eval as always
    finally:
        easy_vqa.eval()
    easy_vqa.answer(image, "what shape is it?")
    assert not easy_vqa.training


def test_a_dual_encoder_in_train_mode_embeds_deterministically(gallery):
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    model = DualEncoder(DualEncoderConfig(embed_dim=8, image_head="mlp", text_head="mlp", head_dropout=0.5)).train()
    image = str(next(gallery.glob("*.jpg")))
    first, second = model.encode_image([image]), model.encode_image([image])
    assert np.array_equal(first, second)  # dropout off while embedding
    assert np.array_equal(model.encode_text(["a cat"]), model.encode_text(["a cat"]))
    assert model.training  # and back on for the training that continues


# -- fusion encoder inputs -----------------------------------------------------------------------------------------
def test_one_image_and_one_question_are_one_row(easy_vqa, gallery):
    pixels = np.asarray(polymodal.data.images.load_image(next(gallery.glob("*.jpg"))))
    assert easy_vqa.encode_images(pixels).shape[0] == 1  # not one image per pixel row
    states, mask = easy_vqa.encode_questions("what colour is it?")
    assert states.shape[0] == 1 and mask.shape[0] == 1  # not one question per character


@pytest.mark.parametrize("question, kw, message", [
    (["what?", "why?"], {}, "the question must be one string, got list"),
    (None, {}, "the question must be one string, got NoneType"),
    ("what shape?", {"top_k": 0}, "top_k must be a whole number of at least 1"),
    ("what shape?", {"top_k": "2"}, "top_k must be a whole number of at least 1"),
])
def test_answer_refuses_a_question_that_is_not_one_string(easy_vqa, coco_yesno, gallery, question, kw, message):
    image = str(next(gallery.glob("*.jpg")))
    for model in (easy_vqa, coco_yesno):
        with pytest.raises(PolymodalError, match=message):
            model.answer(image, question, **kw)


def test_fuse_names_the_wrong_input(easy_vqa, gallery):
    images = easy_vqa.encode_images([str(p) for p in sorted(gallery.glob("*.jpg"))[:2]])
    states, mask = easy_vqa.encode_questions(["what shape?", "what colour?"])
    assert easy_vqa(images, states, mask).shape == (2, len(easy_vqa.answers))
    cases = [((images.mean(1), states, mask), r"images must be grid features \[N, 49, 1280\]"),
             ((images[:, :16], states, mask), r"images must be grid features"),
             ((images, ["what?", "why?"], mask), "states must be a torch tensor"),
             ((images, states, mask[:, :2]), r"states must be \[R, L, 384\] with a mask \[R, L\]"),
             ((images[:1], states, mask), "1 images for 2 questions"),
             ((images, states, mask, torch.tensor([0, 2])), r"row_image must be an integer tensor \[2\]"),
             ((images, states, mask, torch.tensor([0.0, 1.0])), "row_image must be an integer tensor")]
    for args, message in cases:
        with pytest.raises(PolymodalError, match=message):
            easy_vqa(*args)


def test_config_answers_must_be_a_list_and_freeze_takes_one_name():
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    with pytest.raises(PolymodalError, match="answers must be a list of answer strings, got str"):
        FusionEncoderConfig(answers="yes").validate()
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, answers=["yes", "no"]))
    frozen = model.freeze("fusion")
    assert frozen and all(n.startswith("fusion.") for n in frozen)


# -- your own fusion module ----------------------------------------------------------------------------------------
def test_a_registered_fusion_trains_saves_and_loads(tmp_path, gallery):
    from polymodal.fusion import FUSIONS, FusionModule, FusionOutput, register_fusion
    from polymodal.fusion.base import masked_mean
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig, load_fusion_encoder

    class MaxFusion(FusionModule):
        name = "test_max"

        def __init__(self, dims, out_dim):
            super().__init__(dims, out_dim)
            self.proj = torch.nn.ModuleList(torch.nn.Linear(d, out_dim) for d in dims)

        def forward(self, inputs, masks=None):
            masks = masks or [None] * len(inputs)
            pooled = [p(x if x.ndim == 2 else masked_mean(x, m)) for p, x, m in zip(self.proj, inputs, masks)]
            return FusionOutput(pooled=torch.stack(pooled).amax(0))

    try:
        assert register_fusion(MaxFusion) is MaxFusion
        with pytest.raises(PolymodalError, match="fusion must be a registered name, got a MaxFusion"):
            FusionEncoderConfig(fusion=MaxFusion([4, 4], 4)).validate()
        model = FusionEncoder(FusionEncoderConfig(fusion="test_max", dim=16, answers=["yes", "no"]))
        images = model.encode_images([str(next(gallery.glob("*.jpg")))])
        states, mask = model.encode_questions("is it?")
        model(images, states, mask).sum().backward()
        assert model.fusion.proj[0].weight.grad is not None
        model.save(tmp_path / "m")
        again = load_fusion_encoder(tmp_path / "m")
        assert isinstance(again.fusion, MaxFusion)
        assert torch.allclose(again.eval()(images, states, mask), model.eval()(images, states, mask))

        class Clash(FusionModule):
            name = "concat"

        with pytest.raises(PolymodalError, match="the fusion name 'concat' is taken"):
            register_fusion(Clash)

        class Nameless(FusionModule):
            pass

        with pytest.raises(PolymodalError, match="needs its own `name"):
            register_fusion(Nameless)
        with pytest.raises(PolymodalError, match="takes a FusionModule subclass"):
            register_fusion(torch.nn.Linear)
    finally:
        FUSIONS.pop("test_max", None)


# -- index, export, losses, CLIP folders ---------------------------------------------------------------------------
def test_index_refuses_a_vqa_model_and_a_list_and_removes_one_path(easy_vqa, lite, gallery, tmp_path):
    from polymodal.index import ImageIndex

    index = ImageIndex(tmp_path / "db")
    with pytest.raises(PolymodalError, match="cannot embed images"):
        index.update(gallery, easy_vqa)
    assert not (tmp_path / "db").exists()  # nothing half-made
    with pytest.raises(PolymodalError, match="update\\(\\) takes one folder"):
        index.update([str(next(gallery.glob("*.jpg")))], lite)
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(gallery.glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    index.update(folder, lite, progress=False)
    assert index.remove(str(folder / sorted(p.name for p in folder.iterdir())[0])) == 1
    assert len(index) == 2


def test_export_mistakes_are_named(easy_vqa, lite, tmp_path):
    pytest.importorskip("onnx")
    from polymodal.export.fusion_export import export_fusion_onnx
    from polymodal.export.onnx_export import export_onnx, validation_set

    with pytest.raises(PolymodalError, match="is a VQA model: export it with .*export_fusion_onnx"):
        export_onnx(easy_vqa, tmp_path / "a", validation_set())
    with pytest.raises(PolymodalError, match="val must be a ValidationSet, got list"):
        export_onnx(lite, tmp_path / "b", ["a.jpg"])
    with pytest.raises(PolymodalError, match="variants must be a list of names"):
        export_onnx(lite, tmp_path / "c", validation_set(), variants="int8_dynamic")
    with pytest.raises(PolymodalError, match="variants must be a list of names"):
        export_fusion_onnx(easy_vqa, tmp_path / "d", [{"image": "x.png", "question": "q", "answer": "a"}],
                           variants="int8_dynamic")
    assert not any((tmp_path / n).exists() for n in "abcd")  # refused before anything is written


def test_accuracy_by_type_takes_dict_rows():
    from polymodal.eval.vqa import accuracy_by_type

    rows = [{"image": "a.png", "question": "q", "answer": "Yes"}, {"image": "b.png", "question": "q", "answer": "red"}]
    assert accuracy_by_type(["yes", "blue"], rows)["per_type"] == {"other": 0.0, "yes/no": 1.0}


def test_contrastive_loss_names_the_mistake():
    from polymodal.losses.contrastive import LearnableTemperature, contrastive_loss

    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    temperature = LearnableTemperature()
    assert contrastive_loss(x, x, temperature()).loss.ndim == 0
    for args, message in [((x.numpy(), x, 10.0), "image_emb must be a torch tensor"),
                          ((x, [[0.0] * 8] * 4, 10.0), "text_emb must be a torch tensor"),
                          ((x, x, temperature), r"logit_scale is a module; pass its value, e.g. temperature\(\)"),
                          ((x.double(), x, 10.0), "image_emb is torch.float64 but text_emb is torch.float32")]:
        with pytest.raises(PolymodalError, match=message):
            contrastive_loss(*args)


def test_hf_clip_folder_without_preprocessor_config_crops_to_the_towers_size(tmp_path):
    from test_clip_checkpoints import make_tiny_clip

    folder = tmp_path / "clip"
    make_tiny_clip(folder)
    (folder / "preprocessor_config.json").unlink()
    model = polymodal.load(folder)
    assert model.transform.crop == 32  # the tiny tower's image_size, not OpenAI's 224
    assert model.encode_image([np.zeros((40, 50, 3), np.uint8)]).shape == (1, model.dim)
