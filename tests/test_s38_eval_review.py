"""Stop 38's review of evaluation: an image->text recall certain from the other images' captions is warned of."""

import logging

from polymodal.eval.caveats import warn_of_certain_recall


def test_i2t_certain_counts_other_images_captions_only(caplog):
    with caplog.at_level(logging.WARNING):
        warn_of_certain_recall(2, 12, fewest_captions=6)  # best caption ranks 7 at worst
    assert "i2t_R@10" in caplog.text and "i2t_R@5" not in caplog.text
