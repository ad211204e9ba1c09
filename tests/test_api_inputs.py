"""What the Python API does with awkward arguments: a single string is one item (never its characters), non-strings
and bad counts are one PolymodalError, and recipes take nested settings as dicts."""

import numpy as np
import pytest

import polymodal
from polymodal.errors import PolymodalError


@pytest.fixture(scope="module")
def index(db):
    from polymodal.index import ImageIndex

    return ImageIndex(db)


# -- texts: one string is one text; anything else that is not a string is refused ---------------------------------


def test_encode_text_single_string_is_one_text(lite):
    assert np.allclose(lite.encode_text("a red car"), lite.encode_text(["a red car"]))


@pytest.mark.parametrize("texts, where", [([None], "texts[0]"), (["ok", 3], "texts[1]"), (["a", ["a", "b"]], "texts[1]"),
                                          (None, "texts must be")])
def test_encode_text_refuses_non_strings(lite, texts, where):
    with pytest.raises(PolymodalError, match=where.replace("[", r"\[").replace("]", r"\]")):
        lite.encode_text(texts)


@pytest.mark.parametrize("bs", [0, -1, 2.5])
def test_batch_size_below_1_is_refused(lite, gallery, bs):
    with pytest.raises(PolymodalError, match="batch_size must be a whole number of at least 1"):
        lite.encode_text(["a"], batch_size=bs)
    with pytest.raises(PolymodalError, match="batch_size must be a whole number of at least 1"):
        lite.encode_image([gallery / "cat.jpg"], batch_size=bs)


def test_classify_single_label_string_is_one_label(lite, gallery, caplog):
    assert [label for label, _ in lite.classify(gallery / "cat.jpg", "red")[0]] == ["red"]
    assert "got one label ('red'): every image scores 1.0" in caplog.text and "split" not in caplog.text
    caplog.clear()
    assert lite.classify(gallery / "cat.jpg", "cat,dog")[0] == [("cat,dog", 1.0)]  # still one label, but said why
    assert "pass a list, e.g. 'cat,dog'.split(',')" in caplog.text
    caplog.clear()
    lite.classify(gallery / "cat.jpg", ["cat", "dog"])
    lite.classify(gallery / "cat.jpg", ["cat"])  # a list says what it means (the CLI notes one label itself)
    assert "one label" not in caplog.text


@pytest.mark.parametrize("top_k", [0, -1])
def test_classify_top_k_below_1_is_refused(lite, gallery, top_k):
    with pytest.raises(PolymodalError, match="top_k"):
        lite.classify(gallery / "cat.jpg", ["cat", "dog", "car"], top_k=top_k)


# -- VQA models: choices and predict() rows -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["easy_vqa", "coco_yesno"])
def test_vqa_choices_string_is_one_choice(request, gallery, name):
    model = request.getfixturevalue(name)
    got = model.answer(gallery / "cat.jpg", "is there a cat?", choices="yes")
    assert got["answer"] == "yes" and [a for a, _ in got["alternatives"]] == ["yes"]
    with pytest.raises(PolymodalError, match=r"choices\[1\]"):  # (a number is its text since stop 45: 1 is "1")
        model.answer(gallery / "cat.jpg", "is there a cat?", choices=["yes", None])


@pytest.mark.parametrize("name", ["easy_vqa", "coco_yesno"])
def test_vqa_predict_rows(request, gallery, name):
    model = request.getfixturevalue(name)
    assert model.predict([], []) == []
    image, question = str(gallery / "cat.jpg"), "is it red?"
    assert model.predict(image, question) == model.predict([image], [question])  # one row, not 23 characters
    with pytest.raises(PolymodalError, match=r"questions\[0\]"):
        model.predict([image], [None])
    with pytest.raises(PolymodalError, match="batch_size"):
        model.predict([image], [question], batch_size=0)


# -- the image index ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -2, 2.5, "3", True])
def test_search_k_must_be_a_whole_number(index, lite, k):
    with pytest.raises(PolymodalError, match="k must be a whole number of at least 1"):
        index.search(lite.encode_text("a cat"), k)


def test_search_takes_numpy_integers(index, lite):
    assert len(index.search(lite.encode_text("a cat"), np.int64(2))[0]) == 2


def test_search_refuses_non_finite_queries(index, lite):
    with pytest.raises(PolymodalError, match="NaN or infinite"):
        index.search(np.full((1, lite.dim), np.nan))


def test_search_text_takes_one_string(index, lite):
    with pytest.raises(PolymodalError, match="one query string"):
        index.search_text(lite, ["q1", "q2"])


# -- polymodal.load options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, accepted", [("lite", "takes only top_k"), ("easy-vqa", "takes no options"),
                                            ("coco-yesno", "takes no options")])
def test_load_refuses_unknown_options(name, accepted):
    with pytest.raises(PolymodalError, match=f"unknown option.*tokenizer.*{accepted}"):
        polymodal.load(name, tokenizer="x")


# -- training: recipes built from Python, and messages that fit Python and the CLI ----------------------------------


def test_recipes_take_nested_settings_as_dicts():
    from polymodal.train.contrastive import ContrastiveRecipe
    from polymodal.train.pretrain import PretrainRecipe
    from polymodal.train.trainer import TrainConfig
    from polymodal.train.vqa import VQARecipe

    r = ContrastiveRecipe(pairs=["p.jsonl"], out="run", train={"epochs": 1}, arch={"embed_dim": 128})
    r.validate()
    assert isinstance(r.train, TrainConfig) and r.train.epochs == 1 and r.arch.embed_dim == 128
    v = VQARecipe(qa=["qa.jsonl"], out="run", train={"epochs": 2}, arch={"dim": 64})
    v.validate()
    assert v.train.epochs == 2 and v.train.early_stop_metric == "val/accuracy" and v.arch.dim == 64  # VQA defaults kept
    p = PretrainRecipe(pairs=["p.jsonl"], out="run", train={"epochs": 2}, arch={"dim": 64})
    p.validate()
    assert p.train.epochs == 2 and p.arch.fusion == "co_attention"
    with pytest.raises(PolymodalError, match="unknown settings under train"):
        ContrastiveRecipe(pairs=["p.jsonl"], out="run", train={"epoch": 1})
    with pytest.raises(PolymodalError, match="train must be a TrainConfig or a dict"):
        VQARecipe(qa=["qa.jsonl"], out="run", train=5)


def test_range_errors_name_the_setting_and_the_flag():
    from polymodal.train.contrastive import ContrastiveRecipe

    with pytest.raises(PolymodalError, match=r"fix batch_size \(--batch-size"):
        ContrastiveRecipe(pairs=["p.jsonl"], out="run", batch_size=1).validate()
    with pytest.raises(PolymodalError, match="image_trainable_blocks, which is 0; set both"):
        ContrastiveRecipe(pairs=["p.jsonl"], out="run", train={"unfreeze_every": 2}).validate()
    ContrastiveRecipe(pairs=["p.jsonl"], out="run", train={"unfreeze_every": 2},
                      arch={"image_trainable_blocks": 2}).validate()


def test_one_image_or_a_batch_of_them_in_any_container():
    import numpy as np

    from polymodal.models.inputs import as_images

    pixels = np.zeros((8, 8, 3), np.uint8)
    assert len(as_images(pixels)) == 1 and len(as_images(np.zeros((4, 8, 8, 3), np.uint8))) == 4
    assert as_images(np.array(["a.png", "b.png"])) == ["a.png", "b.png"]  # an array of paths is a batch
    assert as_images(p for p in ("a.png", "b.png")) == ["a.png", "b.png"]
    assert as_images("a.png") == ["a.png"] and as_images(b"\x89PNG") == [b"\x89PNG"]


# -- the input helpers themselves (mutation-testing additions) -----------------------------------------------------


def test_as_texts_refuses_a_dict():
    # a dict is iterable (its keys), but {"text": ...} is a mistake, not a list of texts
    from polymodal.models.inputs import as_texts

    with pytest.raises(PolymodalError, match="texts must be a string or a list of strings, got dict"):
        as_texts({"a cat": 1})
    assert as_texts(("a", "b")) == ["a", "b"]


def test_as_images_keeps_bytearray_whole():
    # bytearray holds one encoded image, like bytes: not a batch of ints
    from polymodal.models.inputs import as_images

    data = bytearray(b"\x89PNG\r\n")
    assert as_images(data) == [data]


def test_check_count_none_only_when_it_means_something():
    from polymodal.models.inputs import check_count

    assert check_count(None, "batch_size", "the default") is None
    with pytest.raises(PolymodalError, match="k must be a whole number of at least 1, got None"):
        check_count(None, "k")
    assert check_count(np.int64(3), "k") == 3


def test_vqa_rows_counts_must_match():
    from polymodal.models.inputs import vqa_rows

    assert vqa_rows("a.png", "q?") == (["a.png"], ["q?"])
    with pytest.raises(PolymodalError, match="got 2 images but 1 questions"):
        vqa_rows(["a.png", "b.png"], ["q?"])
