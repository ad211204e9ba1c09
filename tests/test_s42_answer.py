"""What a review of answering (stop 42) found: `vqa --explain` naming the photo itself replaced the photo with its
heat map; choices from a generator were used up by the check and then called missing; and a question near
max_question_tokens cut the candidates outside the vocabulary off the text the ITM head scores, so they all tied."""

import shutil

import easy_vqa
import pytest
import torch

RED_TRIANGLE = easy_vqa.get_test_image_paths()[0]  # test image 0: "what is the color of the triangle?" -> red


def test_a_heat_map_named_as_the_photo_it_explains_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import polymodal.cli_vqa as cli_vqa
    from polymodal import cli

    photo = tmp_path / "photo.png"
    shutil.copy(RED_TRIANGLE, photo)
    before = photo.read_bytes()
    monkeypatch.setattr(cli_vqa, "_load_vqa_model", lambda *a: pytest.fail("the model loaded"))
    assert cli.main(["vqa", str(photo), "what color?", "--explain", str(tmp_path / "." / "photo.png")]) == 2
    assert "it is the image it explains" in capsys.readouterr().err
    assert photo.read_bytes() == before


def test_save_heatmap_never_writes_over_the_image_it_explains(tmp_path):
    import numpy as np

    from polymodal.apps.explain import save_heatmap
    from polymodal.errors import PolymodalError

    photo = tmp_path / "photo.png"
    shutil.copy(RED_TRIANGLE, photo)
    before = photo.read_bytes()
    with pytest.raises(PolymodalError, match="it is the image it explains"):
        save_heatmap(str(photo), np.ones((7, 7), np.float32), photo)
    assert photo.read_bytes() == before
    assert save_heatmap(str(photo), np.ones((7, 7), np.float32), tmp_path / "heat.png",
                        transform=None).is_file()  # another name


def test_choices_from_a_generator_are_ranked_not_called_missing(easy_vqa):
    question = "what is the color of the triangle?"
    listed = easy_vqa.answer(RED_TRIANGLE, question, choices=["red", "blue"])
    assert easy_vqa.answer(RED_TRIANGLE, question, choices=(c for c in ["red", "blue"])) == listed
    assert easy_vqa.answer(RED_TRIANGLE, question, choices=map(str.strip, [" red", "blue "])) == listed


@pytest.fixture(scope="module")
def itm_model():
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion="concat", answers=["yes", "no", "red"], dim=32, itm_head=True))
    with torch.no_grad():
        model.itm[1].weight.mul_(20)  # spread the match probabilities apart from 0.5
    return model.eval()


def test_choices_outside_the_vocabulary_keep_their_words_after_a_long_question(itm_model):
    question = "what " * 28 + "color?"  # 29 word pieces: it fits the 32 (with [CLS], [SEP]); " purple" did not
    scores = dict(itm_model.answer(RED_TRIANGLE, question, choices=["purple", "orange", "pink"])["alternatives"])
    assert len(set(scores.values())) == 3, scores  # each scored by its own words, not three ties
    assert itm_model.predict_choices([RED_TRIANGLE], [question], ["purple", "orange", "pink"])[0] == \
        max(scores.items(), key=lambda kv: kv[1])
    text = itm_model._itm_text(question, "dark purple")  # the question's end goes, the candidate stays whole
    assert text.endswith(" dark purple") and text.startswith("what what")
    assert len(itm_model.text_tower._fast([text])["input_ids"][0]) <= itm_model.config.max_question_tokens
    assert itm_model._itm_text("what color?", "dark purple") == "what color? dark purple"  # short: as before
