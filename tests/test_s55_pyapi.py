"""Stop 55, the Python API as a notebook shows it (helper pyapi): a torch model's repr was nn.Module's ~300 lines
of layers, `hits + more_hits` fell back to a plain list (no thumbnails), and the README's Python training recipe
warned that the ITM head drifts (its CLI twin passes --itm-weight 0.5)."""

import re

import pytest
from docs_text import docs_text

import polymodal
from polymodal.index import Hit
from polymodal.index.hits_view import Hits
from polymodal.trained_with import write_trained_with


def test_a_builtin_torch_model_says_what_it_is_in_a_few_lines(easy_vqa):
    shown = repr(easy_vqa)
    assert shown.splitlines()[0] == f"FusionEncoder({easy_vqa.key}, 13 answers)"
    assert len(shown.splitlines()) < 10 and "Conv2dStaticSamePadding" not in shown and str(easy_vqa) == shown
    assert "fusion: concat, dim 128" in shown and "VQA over 13 answers" in shown
    assert "loaded from: the built-in 'easy-vqa'" in shown and "trained on easy-VQA" in shown
    assert "torch.nn.Module.__repr__(model)" in shown
    assert "Conv2dStaticSamePadding" in torch_layers(easy_vqa)  # the layer tree is still there for who wants it


def torch_layers(model) -> str:
    import torch

    return torch.nn.Module.__repr__(model)


@pytest.mark.parametrize("name, first", [("default", "DualEncoder({key}, dim=384)"),
                                         ("captioner", "Captioner({key}, writes captions)")])
def test_the_other_torch_builtins_too(name, first):
    model = polymodal.load(name)
    lines = repr(model).splitlines()
    assert lines[0] == first.format(key=model.key) and len(lines) < 10
    assert f"loaded from: the built-in {name!r}" in repr(model)


def test_a_saved_model_names_its_folder_and_the_command_that_trained_it(easy_vqa, tmp_path):
    folder = easy_vqa.save(tmp_path / "mine")
    write_trained_with(folder, {"polymodal": "0.1.0", "command": ["polymodal", "train", "vqa", "--qa", "q.jsonl"],
                                "settings": {"train": {"seed": 7}}})
    shown = repr(polymodal.load(str(folder)))
    assert f"loaded from: {folder}" in shown
    assert "trained with: polymodal train vqa --qa q.jsonl (polymodal 0.1.0, seed 7;" in shown


def test_a_model_built_in_python_says_it_has_no_folder():
    from polymodal.models.dual_encoder import DualEncoder

    shown = repr(DualEncoder())
    assert shown.startswith("DualEncoder(dual-encoder@untrained, dim=256)") and "loaded from: no folder" in shown


def hits(*scores) -> Hits:
    return Hits(Hit(f"/photos/{s}.jpg", s, id=i) for i, s in enumerate(scores))


def test_hit_lists_joined_like_lists_stay_hit_lists_and_show_their_photos():
    dogs, cats = hits(0.9, 0.5), hits(0.7)
    both = dogs + cats
    assert type(both) is Hits and [h.score for h in both] == [0.9, 0.5, 0.7]  # list's order, not re-ranked
    assert both._repr_html_().startswith("<div><p>3 hits</p>")
    assert type([cats[0]] + dogs) is Hits and [h.score for h in [cats[0]] + dogs] == [0.7, 0.9, 0.5]
    assert type(dogs * 2) is Hits and type(2 * dogs) is Hits and type(dogs.copy()) is Hits
    assert len(dogs) == 2 and dogs == [Hit("/photos/0.9.jpg", 0.9, id=0), Hit("/photos/0.5.jpg", 0.5, id=1)]
    with pytest.raises(TypeError, match="can only concatenate list"):
        dogs + 3
    with pytest.raises(TypeError):
        3 + dogs


def test_the_readme_python_recipe_trains_the_itm_head_as_its_cli_twin_does():
    text = docs_text()
    cli = re.search(r"polymodal train vqa --qa train.jsonl --model runs/pt/model [^\n]*", text).group(0)
    python = re.search(r"best = train_vqa\(VQARecipe\([^)]*\)\)", text).group(0)
    assert "--itm-weight 0.5" in cli and "itm_weight=0.5" in python


def test_a_builtin_loaded_in_bf16_says_so():
    assert "towers: EfficientNet-Lite0 (bf16 inference) 7x7 grid" in repr(polymodal.load("easy-vqa", precision="bf16"))


def test_coco_yesno_explain_from_python_gives_python_advice_not_a_cli_flag(coco_yesno):
    """Only Python reaches YesNoModel.explain (the CLI refuses --explain before it): "drop --explain" meant nothing
    there."""
    with pytest.raises(polymodal.PolymodalError) as got:
        coco_yesno.explain("photo.jpg", "is there a dog?")
    assert "--explain" not in str(got.value) and "occlusion_heat(model, image" in str(got.value)


def test_help_names_every_kind_of_image_the_readme_accepts():
    """help(model.encode_image) said "Paths, PIL images or numpy arrays"; bytes, file objects and tensors work too."""
    from polymodal.models.captioner import Captioner
    from polymodal.models.fusion_encoder import FusionEncoder
    from polymodal.models.interface import EmbeddingInterface

    for doc in (EmbeddingInterface.encode_image.__doc__, Captioner.caption.__doc__):
        assert all(kind in doc for kind in ("bytes", "file objects", "PIL images", "tensors"))
    assert "answer(image, question)" in FusionEncoder.__doc__  # help(vqa_model) opened on tensor shapes only


def test_a_blank_text_query_is_refused_in_python_as_on_the_command_line(lite, db):
    """`polymodal search --db DB ""` exits 2; index.search_text(model, "") ranked every photo by a blank text."""
    from polymodal.index import ImageIndex

    for blank in ("", "  \n", "\u200b"):
        with pytest.raises(polymodal.PolymodalError, match="the text query is empty"):
            ImageIndex(db).search_text(lite, blank)
    assert len(ImageIndex(db).search_text(lite, "a cup of coffee", k=1)) == 1


def test_the_readme_names_the_other_recipes_as_they_are_spelled():
    """"also train.contrastive / train.captioning" left the names to guess (train_captioning, CaptioningRecipe: no
    such names; they are train_captioner and CaptionRecipe)."""
    import importlib

    line = re.search(r"# also train\.contrastive [^\n]*", docs_text()).group(0)
    named = re.findall(r"train\.(\w+) \((\w+), (\w+)\)", line)
    assert [module for module, *_ in named] == ["contrastive", "captioning"]
    for module, recipe, function in named:
        found = importlib.import_module(f"polymodal.train.{module}")
        assert hasattr(found, recipe) and hasattr(found, function), (module, recipe, function)
