"""Model folders, identity and training-photo records (review s41): a model's version (its key's second half) is its
weights' hash, checked when the folder loads."""

import json
import shutil

import pytest
import torch

import polymodal
from polymodal.errors import PolymodalError


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two saved dual encoders of one architecture with different heads (as two runs with different seeds)."""
    from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig

    root = tmp_path_factory.mktemp("two")
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig(embed_dim=8))
    model.save(root / "a")
    with torch.no_grad():
        model.image_head.proj.weight.add_(1.0)
    model.save(root / "b")
    return root / "a", root / "b"


def test_weights_from_another_model_are_refused_not_loaded_under_this_ones_key(two_models, tmp_path):
    """A model.safetensors copied from another model (or a folder half rewritten) loaded silently with the version
    config.json records: the other model's vectors under this one's key, which indexes and caches then accepted."""
    a, b = two_models
    assert polymodal.load(str(a)).key != polymodal.load(str(b)).key
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copy(b / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(PolymodalError, match="mixes two models' files"):
        polymodal.load(str(mixed))
    moved = tmp_path / "moved elsewhere"  # a copied or renamed folder keeps loading, under its key
    shutil.copytree(a, moved)
    assert polymodal.load(str(moved)).key == polymodal.load(str(a)).key


def test_a_config_without_a_version_gets_its_weights_hash_not_a_shared_unknown(two_models, tmp_path):
    a, b = two_models
    keys = []
    for src in (a, b):
        folder = tmp_path / src.name
        shutil.copytree(src, folder)
        config = json.loads((folder / "config.json").read_text())
        recorded = config.pop("version")
        (folder / "config.json").write_text(json.dumps(config))
        model = polymodal.load(str(folder))
        assert model.version == recorded
        keys.append(model.key)
    assert keys[0] != keys[1]  # both were "dual-encoder@unknown"


def test_a_loaded_model_saved_again_keeps_its_training_photos(two_models, gallery, tmp_path):
    """polymodal.load(X).save(Y) kept X's key and outputs but not training_photos.txt: `eval --model Y` on X's
    training photos said seen_in_training null (records none) and warned of nothing."""
    from polymodal.eval.caveats import data_caveats
    from polymodal.training_photos import photo_hash, read_training_photos, write_training_photos

    a, _ = two_models
    original = tmp_path / "original"
    shutil.copytree(a, original)
    write_training_photos(original, {photo_hash(gallery / "cat.jpg")}, {photo_hash(gallery / "moon.jpg")})
    model = polymodal.load(str(original))
    model.save(tmp_path / "again")
    again = polymodal.load(str(tmp_path / "again"))
    assert again.key == model.key
    assert read_training_photos(tmp_path / "again") == read_training_photos(original)
    caveats = data_caveats(str(tmp_path / "again"), [gallery / "cat.jpg", gallery / "moon.jpg", gallery / "coins.jpg"], 0)
    assert (caveats["seen_in_training"], caveats["seen_in_validation"]) == (1, 1)
    again.save(tmp_path / "again")  # saved over its own folder: the list stays
    assert read_training_photos(tmp_path / "again") == read_training_photos(original)


def test_a_built_in_name_loads_the_built_in_even_beside_an_export_folder_called_so(tmp_path, monkeypatch, caplog):
    """With an ONNX export written to ./default (another model's: `export onnx runs/x/model --out default`),
    `--model default` ran that export through onnxruntime, under the name 'default' (an index recorded the built-in's
    name; eval counted the built-in's training photos, not the export's), while a saved model folder ./default loaded
    the built-in: a name is now the built-in in both runtimes, with a warning naming ./default."""
    import logging

    from polymodal.registry import settled_runtime

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "onnx_config.json").write_text("{}")
    assert settled_runtime("auto", "default") == "torch"
    assert settled_runtime("auto", "./default") == "onnx"
    with caplog.at_level(logging.WARNING):
        model = polymodal.load("default", runtime="torch")  # was: "default is an ONNX export, which runs with ..."
    assert model.name == "default" and "pass ./default to load that folder" in caplog.text
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PolymodalError, match="no ONNX export of 'default'"):  # not ./default's (here unreadable) export
        polymodal.load("default", runtime="onnx")
