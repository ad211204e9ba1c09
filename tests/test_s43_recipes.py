"""The recipe `default` was trained with ships inside the package: `--config default` works outside a clone."""

import json
from pathlib import Path

from polymodal.cli_train import _read_config, shipped_recipes
from polymodal.errors import PolymodalError
from polymodal.resources import HERE

REPO = Path(__file__).resolve().parents[1]


def test_default_recipe_is_a_package_resource():
    assert shipped_recipes() == {"default": HERE / "recipes" / "default.json"}
    assert _read_config("default") == json.loads((HERE / "recipes" / "default.json").read_text())
    assert _read_config("default")["arch"]["name"] == "default"
    # the clone's old path still reads the same file
    assert (REPO / "recipes" / "default.json").resolve() == (HERE / "recipes" / "default.json").resolve()


def test_a_file_named_like_a_recipe_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").write_text('{"epochs": 2}')
    assert _read_config("default") == {"epochs": 2}


def test_unknown_recipe_names_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        _read_config("defualt")
    except PolymodalError as exc:
        assert "config file not found" in str(exc) and "named: default" in str(exc)
    else:
        raise AssertionError("a missing config was read")

