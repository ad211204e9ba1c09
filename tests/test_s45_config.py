"""Stop 45: a recipe's architecture settings may sit at its top level, as its train settings may. A --config key
without a flag (e.g. VQA's decision_heads) was refused at the top level as unknown, and the refusal's list of known
keys left out the architecture's keys that do have flags (the captioner's prefix_grid, lora_rank, ...)."""

import json

import pytest

from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.train.captioning import CaptionRecipe
from polymodal.train.vqa import VQARecipe


def test_architecture_keys_at_the_top_level_go_to_arch():
    recipe = VQARecipe.from_dict({"qa": "a.jsonl", "out": "r", "decision_heads": False, "epochs": 2,
                                  "arch": {"fusion": "late"}})
    assert (recipe.arch.decision_heads, recipe.arch.fusion, recipe.train.epochs) == (False, "late", 2)
    recipe = CaptionRecipe.from_dict({"pairs": ["a.jsonl"], "out": "r", "prefix_grid": 4, "arch": {"prefix_grid": 2}})
    assert recipe.arch.prefix_grid == 4  # "arch" < top level, as for the train settings
    with pytest.raises(PolymodalError) as exc:
        CaptionRecipe.from_dict({"pairs": ["a.jsonl"], "out": "r", "bogus": 1})
    assert "['bogus']" in str(exc.value) and "'prefix_grid'" in str(exc.value) and "'max_caption_tokens'" in str(exc.value)


def test_a_config_file_takes_an_architecture_key_without_a_flag(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"decision_heads": False, "fusion": "late"}))
    # the missing --qa file is the first thing refused after the recipe is read: the key itself was taken
    code = main(["train", "vqa", "--qa", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "run"),
                 "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "missing.jsonl" in err and "unknown" not in err, err
