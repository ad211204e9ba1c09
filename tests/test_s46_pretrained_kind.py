"""A fusion model that was only pretrained (no VQA head yet) where an embedding model goes: the refusal called it "a
VQA model" (s46 pretraining review), which it is not until `polymodal train vqa --model` gives it a head."""

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
from polymodal.registry import require_embedding


def _fusion(answers):
    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, mlm_head=True,
                                             answers=answers))


def test_a_pretrained_fusion_model_is_not_called_a_vqa_model():
    with pytest.raises(PolymodalError) as err:
        require_embedding(_fusion([]), "runs/pretrain/model")
    message = str(err.value)
    assert "is a pretrained fusion model (no VQA head" in message and "train vqa --model" in message
    assert "VQA model and" not in message and "cannot embed images" in message


def test_a_fine_tuned_one_still_is():
    with pytest.raises(PolymodalError, match="is a VQA model and cannot embed images"):
        require_embedding(_fusion(["yes", "no"]), "runs/vqa/model")
