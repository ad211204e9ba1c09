"""What a review of stop 45's later changes (686e90e..53620e8) found: eval retrieval's error items for unreadable
photos gathered each one's captions in a pass over every caption (minutes on a scraped set with many dead links,
with or without --out), and explain() of an answer outside the vocabulary with a question of non-UTF-8 bytes was
still tokenizers' TypeError traceback. Each test fails without its fix."""

import numpy as np
import pytest
import torch

from polymodal.errors import PolymodalError


class _CountingList(list):
    """A list that counts the passes made over it."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_unreadable_photos_captions_are_gathered_in_one_pass():
    from polymodal.eval.retrieval import Pairs, pairs_of_images

    n, bad = 200, 50  # every 4th photo unreadable, 3 captions each
    captions = _CountingList(f"caption {i}" for i in range(3 * n))
    pairs = Pairs([f"{i}.jpg" for i in range(n)], captions, np.repeat(np.arange(n), 3))
    unreadable = list(range(0, n, n // bad))
    rows = np.array([i for i in range(n) if i not in unreadable])
    kept = pairs_of_images(pairs, rows, {i: f"not a readable image: {i}.jpg" for i in unreadable})
    # one pass per unreadable photo made it O(photos x captions): 2,000 of 20,000 photos took 14 s, and it grows with both
    assert captions.passes <= 3
    assert [name for name, _, _ in kept.left_out] == [f"{i}.jpg" for i in unreadable]
    assert kept.left_out[1][1] == ["caption 12", "caption 13", "caption 14"]
    assert len(kept.images) == n - bad and len(kept.captions) == 3 * (n - bad)


def test_explain_with_a_question_of_bytes_that_were_not_utf8_is_one_error():
    # explain() of an answer outside the vocabulary builds the ITM text before encoding the question anywhere else
    # (answer() and predict() check it first): tokenizers raised "TextInputSequence must be str"
    import easy_vqa

    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", answers=["yes", "no", "red"], dim=32,
                                              itm_head=True)).eval()
    with pytest.raises(PolymodalError, match=r"the question is not valid Unicode \(U\+DCFF at character 7"):
        model.explain(easy_vqa.get_test_image_paths()[0], "what c\udcffolor?", "purple")
