"""Fusion-encoder training from Python, as a fusion audit found it: a head made for the run is never kept as
"epoch 0", an ITM head that cannot train is refused, progressive unfreezing is refused where it has nothing to
open, and evaluating a model leaves its training mode as it was."""

import json

import pytest

from polymodal.errors import PolymodalError
from polymodal.eval.vqa import vqa_accuracy
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
from polymodal.train.captioning import CaptionRecipe
from polymodal.train.pretrain import PretrainRecipe
from polymodal.train.vqa import VQARecipe


def test_an_itm_head_without_itm_weight_is_refused_for_a_new_model() -> None:
    recipe = VQARecipe.from_dict({"qa": ["q.jsonl"], "out": "o", "arch": {"itm_head": True}})
    with pytest.raises(PolymodalError, match="never trains"):
        recipe.validate()
    VQARecipe.from_dict({"qa": ["q.jsonl"], "out": "o", "arch": {"itm_head": True}, "itm_weight": 0.5}).validate()
    # a saved model's ITM head trained before: fine-tuning only the answers keeps it as it is
    VQARecipe.from_dict({"qa": ["q.jsonl"], "out": "o", "model": "some/folder", "arch": {"itm_head": True}}).validate()


@pytest.mark.parametrize("recipe", [
    lambda: VQARecipe.from_dict({"qa": ["q.jsonl"], "out": "o", "train": {"unfreeze_every": 1}}),
    lambda: PretrainRecipe.from_dict({"pairs": ["p.jsonl"], "out": "o", "train": {"unfreeze_every": 1}}),
    lambda: CaptionRecipe.from_dict({"pairs": ["p.jsonl"], "out": "o", "train": {"unfreeze_every": 1}}),
])
def test_progressive_unfreezing_is_refused_where_the_towers_are_cached(recipe) -> None:
    with pytest.raises(PolymodalError, match="unfreeze_every"):
        recipe().validate()


def test_evaluating_a_model_leaves_it_in_training_mode(gallery) -> None:
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", dim=16, answers=["yes", "no"]))
    model.train()
    rows = [{"image": str(gallery / "cat.jpg"), "question": "is it a cat?", "answer": "yes"}]
    vqa_accuracy(model, rows)  # through the feature cache
    assert model.training
    model.eval()
    vqa_accuracy(model, rows)
    assert not model.training
    json.dumps(vqa_accuracy(model, rows))
