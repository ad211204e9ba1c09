"""`serve --model easy-vqa --vqa-model coco-yesno`: two VQA models, one answer endpoint. It said "model 'easy-vqa'
is a VQA model and cannot embed images", though `--model easy-vqa` alone serves (the index's model embeds)."""

import pytest

from polymodal.errors import PolymodalError


def test_two_vqa_models_are_one_clear_error(easy_vqa, coco_yesno, db):
    pytest.importorskip("fastapi")
    from polymodal.serve import create_app

    with pytest.raises(PolymodalError, match="two VQA models: --model easy-vqa answers questions .* --vqa-model "
                                             "coco-yesno; pass one of them"):
        create_app(easy_vqa, db, vqa_model=coco_yesno)
