"""coco-yesno scores with its `default` base's heads, which have dropout: answers must not depend on the train/eval
mode the caller left the base in (a base passed to load_yesno/train_yesno may be one being trained)."""

import numpy as np
from PIL import Image

import polymodal


def test_yesno_answers_do_not_depend_on_the_base_train_mode():
    model = polymodal.load("coco-yesno")
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[16:48, 16:48] = (200, 30, 30)
    image = Image.fromarray(arr)
    ref = model.answer(image, "Is there a red square?")["score"]
    model.base.train()
    try:
        scores = [model.answer(image, "Is there a red square?")["score"] for _ in range(4)]
        assert model.base.training  # the caller's mode is given back
    finally:
        model.base.eval()
    assert np.allclose(scores, ref, atol=1e-6), (ref, scores)
