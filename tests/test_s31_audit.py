"""Mutation audit of the s31 commits (490d14a, 95b0013): a model's config shares nothing with the caller's, the mlm
and mrm freeze parts cover their heads, multiple choice with an ITM head reads each outside choice as given and ranks a row
as answer() does, the inverted-mask warning (not for an empty row of a right-padded mask, not while tracing or
compiling), recipes refuse rows in memory whatever their container and name the setting, freeze_parts' warning,
pretraining's mrm_target default and build_model leaving the caller's arch alone."""

import dataclasses
import importlib
import logging
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from polymodal.data.pairs import Pair, PairSet
from polymodal.errors import PolymodalError
from polymodal.fusion import build_fusion
from polymodal.fusion.base import INVERTED_CHECKS
from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig
from polymodal.models.inputs import as_paths
from polymodal.train import fusion_run, pretrain
from polymodal.train.guards import freeze_parts
from polymodal.train.pretrain import PretrainRecipe

QUESTION = "what colour is it?"


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    return FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, itm_head=True,
                                             answers=["yes", "no", "red"])).eval()


@pytest.fixture(scope="module")
def photo():
    return np.full((64, 64, 3), 120, np.uint8)


# -- the model's config is its own -----------------------------------------------------------------------------------


def test_a_callers_later_change_to_its_config_never_reaches_the_model():
    config = FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, answers=["yes", "no"])
    model = FusionEncoder(config)
    config.answers.append("maybe")  # in place: a shallow copy would share this list with the model's config
    assert model.config.answers == ["yes", "no"] and model.config.answers is not config.answers


def test_freezing_mlm_and_mrm_stops_exactly_their_heads():
    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion="co_attention", dim=16, dropout=0.0, mlm_head=True,
                                              mrm_head="regress"))
    for part, roots in (("mlm", {"mlm_transform", "mlm_bias"}), ("mrm", {"mrm"})):
        for p in model.parameters():
            p.requires_grad_(True)
        frozen = model.freeze(part)
        assert {n.split(".")[0] for n in frozen} == roots, part
        for name, p in model.named_parameters():
            if not name.startswith(("image_tower.", "text_tower.")):
                assert p.requires_grad == (name.split(".")[0] not in roots), name


# -- multiple choice with an ITM head --------------------------------------------------------------------------------


def test_the_itm_head_reads_each_choice_as_given_and_case_duplicates_count_once(enc, photo, monkeypatch):
    asked = []
    encode = enc.encode_questions
    monkeypatch.setattr(enc, "encode_questions", lambda texts, *a, **k: asked.append(list(texts)) or encode(texts, *a, **k))
    out = enc.answer(photo, QUESTION, choices=["Two", "a magenta", "two", "A Magenta"])
    # keyed "2" and "magenta" (as evaluation compares answers), but the ITM head reads the spelling given, once each
    assert [f"{QUESTION} Two", f"{QUESTION} a magenta"] in asked
    assert sorted(a for a, _ in out["alternatives"]) == ["Two", "a magenta"]


def test_predict_choices_ranks_each_row_as_answer_does_with_an_itm_head(enc, photo):
    rows = [["Red", "red", "magenta"], ["magenta", "RED"], ["red", "no"]]  # the last: all known, the VQA softmax
    got = enc.predict_choices([photo] * 3, [QUESTION] * 3, rows)
    for (answer, score), choices in zip(got, rows):
        want = enc.answer(photo, QUESTION, choices=choices)
        assert answer == want["answer"] and score == pytest.approx(want["score"], abs=1e-5)
    assert got[0][0] in ("Red", "magenta") and got[1][0] in ("magenta", "RED")  # the first spelling of each


# -- the inverted-mask warning ---------------------------------------------------------------------------------------


class _Pooled(torch.nn.Module):  # a fusion over (pooled, tokens) inputs as one traceable module
    def __init__(self, fusion):
        super().__init__()
        self.fusion = fusion

    def forward(self, a, b, mask):
        return self.fusion([a, b], [None, mask]).pooled


def test_a_right_padded_mask_with_an_empty_row_is_not_warned_of(caplog):
    fusion = build_fusion("concat", [8, 8], 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).bool()  # one row without text
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        fusion([torch.randn(3, 8), torch.randn(3, 5, 8)], [None, mask])
    assert not caplog.records


def test_an_inverted_mask_of_rows_longer_than_one_token_is_warned_of(caplog):
    fusion = build_fusion("concat", [8, 8], 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        fusion([torch.randn(3, 8), torch.randn(3, 5, 8)], [None, ~mask])
    assert len(caplog.records) == 1 and "mask 1 looks inverted" in caplog.text


def test_the_mask_is_checked_in_the_first_batches_only(caplog):
    # each check reads the mask back (a GPU sync): a module stops looking after INVERTED_CHECKS masks
    fusion = build_fusion("concat", [8, 8], 8)
    right_padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).bool()
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        for _ in range(INVERTED_CHECKS):
            fusion([torch.randn(3, 8), torch.randn(3, 5, 8)], [None, right_padded])
        fusion([torch.randn(3, 8), torch.randn(3, 5, 8)], [None, ~right_padded])
    assert not caplog.records and fusion._inverted_checks_left == 0
    late = build_fusion("concat", [8, 8], 8)
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        for _ in range(INVERTED_CHECKS - 1):
            late([torch.randn(3, 8), torch.randn(3, 5, 8)], [None, right_padded])
        late([torch.randn(3, 8), torch.randn(3, 5, 8)], [None, ~right_padded])
    assert len(caplog.records) == 1


def test_a_modality_without_tokens_is_not_checked():
    fusion = build_fusion("concat", [8, 8], 8)  # [B, 0] mask: no first position to look at
    out = fusion([torch.randn(2, 8), torch.randn(2, 0, 8)], [None, torch.zeros(2, 0, dtype=torch.bool)])
    assert out.pooled.shape == (2, 8)


INVERTED = ~torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()


def test_tracing_never_checks_the_mask(caplog):
    module = _Pooled(build_fusion("concat", [8, 8], 8).eval())
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
        torch.jit.trace(module, (torch.randn(3, 8), torch.randn(3, 5, 8), INVERTED), check_trace=False)
    assert not caplog.records and module.fusion._inverted_checks_left == INVERTED_CHECKS


def test_compiling_never_checks_the_mask(caplog):
    import torch._dynamo

    module = _Pooled(build_fusion("concat", [8, 8], 8).eval())
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="polymodal.fusion.base"):
        explained = torch._dynamo.explain(module)(torch.randn(3, 8), torch.randn(3, 5, 8), INVERTED)
    assert explained.graph_break_count == 0  # the check is a data-dependent branch: it would break the graph
    assert not [r for r in caplog.records if "looks inverted" in r.getMessage()]


# -- recipes refuse rows in memory -----------------------------------------------------------------------------------

ROW = {"image": "a.jpg", "caption": "a cat", "question": "what?", "answer": "cat"}
RECIPES = [("polymodal.train.vqa:VQARecipe", "qa", "val_qa"),
           ("polymodal.train.pretrain:PretrainRecipe", "pairs", "val_pairs"),
           ("polymodal.train.contrastive:ContrastiveRecipe", "pairs", "val_pairs"),
           ("polymodal.train.captioning:CaptionRecipe", "pairs", "val_pairs")]


@pytest.mark.parametrize("rows", [ROW, (ROW,), ["more.jsonl", ROW]], ids=["one-dict", "tuple", "mixed-list"])
@pytest.mark.parametrize("recipe_path, data, key", [(r, d, k) for r, d, v in RECIPES for k in (d, v)])
def test_every_recipe_refuses_rows_in_memory_and_names_the_setting(recipe_path, data, key, rows, tmp_path):
    module, name = recipe_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(PolymodalError, match=f"^{key} takes data files, not rows: write the rows to a JSONL file"):
        cls(out=str(tmp_path), **{data: "data.jsonl", key: rows})


def test_a_tuple_of_files_passes_as_it_is():
    assert as_paths(("a.jsonl", "b.jsonl")) == ("a.jsonl", "b.jsonl") and as_paths([]) == []


# -- freeze_parts ----------------------------------------------------------------------------------------------------


def _any_folder_continues(monkeypatch):
    """--model names a folder, whatever is there (checked at the start of the run, and where the model is built)."""
    monkeypatch.setattr(fusion_run, "continued_folder", lambda name, task: name)
    monkeypatch.setattr(pretrain, "continued_folder", lambda name, task: name)


class _Freezable:
    def __init__(self):
        self.calls = []

    def freeze(self, parts):
        self.calls.append(list(parts))
        return ["fusion.weight"]


def test_freeze_parts_warns_only_of_a_new_model_and_does_nothing_for_no_parts(caplog):
    model = _Freezable()
    with caplog.at_level(logging.INFO, logger="polymodal.train.guards"):
        freeze_parts(model, [], "new")
        assert model.calls == [] and not caplog.records
        freeze_parts(model, ["fusion"], "runs/pt/model")
        assert model.calls == [["fusion"]] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
        freeze_parts(model, ["fusion", "itm"], "new")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert model.calls[-1] == ["fusion", "itm"]
    assert len(warnings) == 1 and "freezing fusion, itm of a new model keeps those parts at their random" in warnings[0]


def test_train_pretrain_freezes_the_built_model_before_encoding(monkeypatch, tmp_path):
    class Frozen(Exception):
        pass

    model, calls = object(), []
    pairs = PairSet.from_pairs([Pair(f"{i}.jpg", f"caption {i}") for i in range(3)])
    _any_folder_continues(monkeypatch)
    monkeypatch.setattr(pretrain, "read_pairs", lambda sources: pairs)
    monkeypatch.setattr(pretrain, "build_model", lambda recipe, resume=False: model)
    monkeypatch.setattr(pretrain, "freeze_parts", lambda *a: calls.append(a) or (_ for _ in ()).throw(Frozen()))
    monkeypatch.setattr(pretrain, "encode_split", lambda *a, **k: pytest.fail("encoded before freezing"))
    recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path / "run"), model="runs/pt/model", freeze="fusion,mrm",
                            val_fraction=0.0, negatives="random")
    with pytest.raises(Frozen):
        pretrain.train_pretrain(recipe, progress=False)
    assert calls == [(model, ["fusion", "mrm"], "runs/pt/model")]


# -- pretraining: mrm_target, the heads built, the caller's arch ------------------------------------------------------


@pytest.fixture
def built(monkeypatch):
    monkeypatch.setattr(pretrain, "FusionEncoder", lambda arch: SimpleNamespace(config=arch))


def test_mrm_target_defaults_to_the_models_own_head(built, monkeypatch, tmp_path):
    recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), arch={"fusion": "co_attention", "mrm_head": "classify"})
    assert recipe.mrm_target == ""
    recipe.validate()  # no contradiction: mrm_target was not given
    assert pretrain.build_model(recipe).config.mrm_head == "classify"

    folder = SimpleNamespace(config=FusionEncoderConfig(fusion="co_attention", mrm_head="classify"),
                             mlm_transform=object(), mrm=object(), itm=object(), add_itm_head=lambda: None)
    _any_folder_continues(monkeypatch)
    monkeypatch.setattr(pretrain, "load_fusion_encoder", lambda path: folder)
    recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), model="runs/pt/model")
    recipe.validate()
    assert pretrain.build_model(recipe) is folder and recipe.arch is folder.config  # continued as it was trained


def test_a_head_no_objective_trains_is_not_built(built, tmp_path):
    recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), objectives={"itm": 1.0}, mrm_target="classify")
    recipe.validate()
    config = pretrain.build_model(recipe).config
    assert config.itm_head and not config.mlm_head and config.mrm_head == ""


def test_build_model_leaves_the_callers_arch_alone(built, tmp_path):
    arch = FusionEncoderConfig(fusion="co_attention", dim=16)
    before = dataclasses.asdict(arch)
    recipe = PretrainRecipe(pairs="p.jsonl", out=str(tmp_path), arch=arch)
    config = pretrain.build_model(recipe).config
    assert dataclasses.asdict(arch) == before
    assert recipe.arch is config and config.itm_head and config.mlm_head and config.mrm_head == "regress"


# -- a continued model's ITM head that train vqa does not train (s32) --------------------------------------------------


def test_an_itm_head_left_untrained_over_trained_layers_is_warned_of(caplog):
    from polymodal.train.vqa import warn_of_a_drifting_itm_head

    torch.manual_seed(0)
    model = FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, itm_head=True,
                                              answers=["yes", "no"]))
    with caplog.at_level(logging.WARNING, logger="polymodal.train.vqa"):
        assert not warn_of_a_drifting_itm_head(model, 0.5, "runs/pt/model")  # it trains
        assert warn_of_a_drifting_itm_head(model, 0.0, "runs/pt/model")
        assert "runs/pt/model's image-text matching (ITM) head does not train" in caplog.text
        model.freeze(["fusion", "image_proj"])
        assert warn_of_a_drifting_itm_head(model, 0.0, "m")  # the text projection still trains
        model.freeze("projections")
        assert not warn_of_a_drifting_itm_head(model, 0.0, "m")  # everything under it is frozen
    model.itm = None
    for p in model.parameters():
        p.requires_grad_(True)
    assert not warn_of_a_drifting_itm_head(model, 0.0, "m")  # no head, nothing to drift
