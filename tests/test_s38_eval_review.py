"""Stop 38's review of evaluation: an image->text recall certain from the other images' captions is warned of."""

import logging

from polymodal.eval.caveats import warn_of_certain_recall


def test_i2t_certain_counts_other_images_captions_only(caplog):
    with caplog.at_level(logging.WARNING):
        warn_of_certain_recall(2, 12, fewest_captions=6)  # best caption ranks 7 at worst
    assert "i2t_R@10" in caplog.text and "i2t_R@5" not in caplog.text


def test_eval_retrieval_warns_of_a_photo_that_is_in_the_set_twice(lite, gallery, tmp_path, caplog):
    import json
    import shutil

    from polymodal import cli

    for name in ("cat", "clock", "coffee", "rocket"):
        shutil.copy(gallery / f"{name}.jpg", tmp_path / f"{name}.jpg")
    shutil.copy(gallery / "cat.jpg", tmp_path / "cat-again.jpg")  # the same bytes under another name
    rows = [{"image": f"{n}.jpg", "caption": f"a photo of a {n.split('-')[0]}"}
            for n in ("cat", "clock", "coffee", "rocket", "cat-again")]
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, rows)))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "retrieval", "--pairs", str(tmp_path / "pairs.jsonl"), "--model", "lite"]) == 0
    assert "1 photos are copies of others in this set" in caplog.text and "cat-again.jpg" in caplog.text
    caplog.clear()
    (tmp_path / "cat-again.jpg").unlink()
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, rows[:4])))
    with caplog.at_level(logging.WARNING):
        assert cli.main(["eval", "retrieval", "--pairs", str(tmp_path / "pairs.jsonl"), "--model", "lite"]) == 0
    assert "copies of others" not in caplog.text


def test_caption_texts_under_several_photos_are_warned_of_when_they_are_many(caplog):
    from polymodal.eval.caveats import warn_of_shared_captions

    with caplog.at_level(logging.WARNING):
        warn_of_shared_captions(["A dog runs.", "a cat", "a  dog runs.", "a car"], [0, 0, 1, 1])
    assert "1 of 3 caption texts belong to several photos (e.g. 'a dog runs.')" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_of_shared_captions(["a dog", "a dog"], [0, 0])  # one photo's own repeat: no tie with another photo
        many = [f"caption {i}" for i in range(400)] + ["caption 0"]  # 1 of 400 shared: too few to move a figure
        warn_of_shared_captions(many, list(range(400)) + [1])
        warn_of_shared_captions([], [])
    assert not caplog.text
