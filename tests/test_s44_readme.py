"""Stop 44, README walkthrough and Python API: the Python entry points the README names (ImageIndex.search_text /
search_image, QdrantCollection, search_texts, occlusion_heat) refuse a user's mistake with one PolymodalError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.apps.explain import occlusion_heat
from polymodal.apps.text_search import search_texts
from polymodal.errors import PolymodalError
from polymodal.index import ImageIndex

from test_index import COLOURS, FakeModel  # noqa: E402 - colour images whose vectors are their projected colour


class _VQAOnly:
    """What a VQA model looks like to the index: it answers, it does not embed."""

    name = "easy-vqa"

    def answer(self, image, question):
        return {"answer": "yes"}


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in COLOURS.items():
        Image.new("RGB", (16, 16), rgb).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def built(tmp_path):
    pics = _photos(tmp_path / "pics")
    index = ImageIndex(tmp_path / "db")
    index.update(pics, FakeModel(), progress=False)
    return pics, index


@pytest.mark.parametrize("model, says", [("fake", "got the model name 'fake'"), (_VQAOnly(), "cannot embed images")])
def test_index_search_refuses_a_name_or_a_vqa_model(built, model, says):
    # update() said so, search_text/search_image ended in AttributeError: 'str' object has no attribute 'key'
    pics, index = built
    with pytest.raises(PolymodalError, match=says):
        index.search_text(model, "red")
    with pytest.raises(PolymodalError, match=says):
        index.search_image(model, pics / "red.png")
    assert index.search_text(FakeModel(), "red", k=1)[0].path.endswith("red.png")


def test_qdrant_search_refuses_a_model_name_and_push_takes_a_path(built, tmp_path):
    pytest.importorskip("qdrant_client", reason="the qdrant extra: pip install -e '.[qdrant]'")
    from polymodal.index.qdrant import QdrantCollection

    _, index = built
    collection = QdrantCollection(str(tmp_path / "q"), "photos")
    # push(ImageIndex("pics.idx")) in the README; push("pics.idx") was AttributeError: no attribute '_reading'
    assert collection.push(str(index.db), progress=False).added == len(COLOURS)
    with pytest.raises(PolymodalError, match="got the model name 'fake'") as err:
        collection.search_text("fake", "red")
    assert "Qdrant" not in str(err.value)  # was "Qdrant collection photos at ...: AttributeError: ..."


def test_search_texts_refuses_a_name_a_vqa_model_and_misaligned_lines():
    model = FakeModel()
    texts = ["red", "green", "blue"]
    query = model.encode_text(["red"])
    with pytest.raises(PolymodalError, match="got the model name 'fake'"):
        search_texts("fake", query, texts)
    with pytest.raises(PolymodalError, match="cannot embed images"):
        search_texts(_VQAOnly(), query, texts)
    with pytest.raises(PolymodalError, match="1 line numbers for 3 texts"):  # was IndexError
        search_texts(model, query, texts, lines=[7])
    assert search_texts(model, query, texts, k=1, lines=[4, 6, 9])[0][0].line == 4


def test_occlusion_heat_refuses_text_and_several_queries(tmp_path):
    model = FakeModel()
    photo = tmp_path / "red.png"
    Image.new("RGB", (16, 16), COLOURS["red"]).save(photo)
    with pytest.raises(PolymodalError, match="not its text"):  # was numpy's "could not convert string to float"
        occlusion_heat(model, photo, "red")
    with pytest.raises(PolymodalError, match="one query vector of 8 values"):  # was a numpy matmul error
        occlusion_heat(model, photo, model.encode_text(["red", "blue"]))
    heat = occlusion_heat(model, photo, model.encode_text(["red"]))  # one row [1, D], as the docs' example gives
    assert heat.shape == (7, 7) and np.isfinite(heat).all()
