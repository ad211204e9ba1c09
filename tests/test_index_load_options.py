"""An index records the loader options its model was loaded with, so the CLI loads that model again."""

from __future__ import annotations

import json

from PIL import Image

import polymodal
from polymodal.cli import main
from polymodal.index import ImageIndex


def test_search_and_index_load_the_model_with_the_options_the_index_recorded(tmp_path, capsys):
    pics = tmp_path / "pics"
    pics.mkdir()
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (64, 64), colour).save(pics / f"{name}.png")
    model = polymodal.load("lite", top_k=5)  # part of the key: lite@1-k5
    index = ImageIndex(tmp_path / "db")
    index.update(pics, model, progress=False)
    assert index.info()["model_options"] == {"top_k": 5}
    assert main(["search", "--db", str(tmp_path / "db"), "something red", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["index", str(pics), "--db", str(tmp_path / "db"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == 2
    plain = ImageIndex(tmp_path / "db2")
    plain.update(pics, polymodal.load("lite"), progress=False)
    assert "model_options" not in plain.info()  # nothing recorded without options: indexes as before


def test_serve_loads_the_indexs_model_with_the_options_it_recorded(tmp_path):
    import pytest

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from polymodal.serve import create_app

    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(pics / "red.png")
    ImageIndex(tmp_path / "db").update(pics, polymodal.load("lite", top_k=5), progress=False)
    with TestClient(create_app("lite", tmp_path / "db")) as c:  # what `serve --db` passes: the recorded name
        r = c.post("/v1/search", json={"text": "red", "k": 1})
    assert r.status_code == 200 and r.json()["model"].endswith("-k5"), r.text


def test_a_collection_records_the_options_and_search_loads_its_model_with_them(tmp_path, capsys):
    import pytest

    pytest.importorskip("qdrant_client")
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(pics / "red.png")
    ImageIndex(tmp_path / "db").update(pics, polymodal.load("lite", top_k=5), progress=False)
    q = ["--qdrant", str(tmp_path / "q"), "--collection", "photos"]
    assert main(["index", "--db", str(tmp_path / "db"), *q]) == 0  # push only
    capsys.readouterr()
    assert main(["info", *q, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["qdrant"]["model_options"] == {"top_k": 5}
    assert main(["search", *q, "red", "--json"]) == 0  # loads lite with top_k=5: the collection's model
    assert json.loads(capsys.readouterr().out)[0]["path"].endswith("red.png")


def test_recorded_options_are_not_forced_where_they_cannot_apply(tmp_path, caplog):
    import logging

    from polymodal.registry import recorded_options_for

    info = {"model_name": "lite", "model_options": {"top_k": 5}}
    assert recorded_options_for(info, "lite") == {"top_k": 5}
    assert recorded_options_for(info, "default") == {}  # another model: not its options
    assert recorded_options_for(info, "lite", "onnx") == {}  # an export bakes its options in; its loader takes none
    gone = {"model_name": str(tmp_path / "vit.pt"), "model_options": {"tokenizer": str(tmp_path / "moved-away")}}
    with caplog.at_level(logging.WARNING):  # the loader looks beside the model again, instead of failing for ever
        assert recorded_options_for(gone, gone["model_name"], "torch") == {}
    assert "which is gone" in caplog.text
