"""eval zeroshot: a tie between the label and another class counts against the image, as retrieval's ranks do;
sorting gave it to the class first by name, so a model that embeds the classes alike scored the majority share."""

import numpy as np

from polymodal.eval.zeroshot import zeroshot_accuracy


class Alike:
    """Every class prompt embeds to one vector (labels the text tower reads as one unknown token, e.g. emoji)."""

    dim = 2

    def label_embeddings(self, classes, templates):
        return np.tile([1.0, 0.0], (len(classes), 1))

    def encode_image(self, images):
        raise AssertionError("not used")

    def encode_text(self, texts):
        raise AssertionError("not used")


def test_classes_the_model_cannot_tell_apart_score_no_hit() -> None:
    labels = ["a-tree"] * 3 + ["b-dog"]  # the majority class sorts first
    details: list = []
    out = zeroshot_accuracy(Alike(), list("wxyz"), labels, image_emb=np.tile([0.6, 0.8], (4, 1)), details=details)
    assert out["top1"] == 0.0 and out["balanced_top1"] == 0.0 and out["top5"] == 1.0
    assert [d["rank"] for d in details] == [2, 2, 2, 2]


def test_a_nan_row_ranks_last_and_clear_wins_still_count() -> None:
    class Axes(Alike):
        def label_embeddings(self, classes, templates):
            return np.eye(3)[: len(classes)]

    emb = np.array([[1.0, 0, 0], [0, 1.0, 0], [np.nan, 0, 0], [0, 0, 1.0]])
    details: list = []
    out = zeroshot_accuracy(Axes(), list("wxyz"), ["a", "b", "a", "a"], image_emb=emb, details=details,
                            classes=["a", "b", "c"])
    assert [d["rank"] for d in details] == [1, 1, 3, 3] and out["top1"] == 0.5
