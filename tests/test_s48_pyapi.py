"""Stop 48's Python API review: file objects as images, ImageIndex and search_image mistakes, and help() of the
main objects saying what they return."""

from __future__ import annotations

import inspect
import io

import numpy as np
import pytest
from PIL import Image

import polymodal
from polymodal.data.images import load_image
from polymodal.errors import PolymodalError
from polymodal.index import Hit, ImageIndex
from polymodal.models.captioner import Captioner
from polymodal.models.conse import ConSEModel
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.inputs import as_images


@pytest.fixture
def jpeg(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_a_binary_file_object_is_one_image(jpeg):
    # It was iterated as lines of bytes: "not a readable image: the given bytes (Truncated File Read)"
    assert len(as_images(io.BytesIO(jpeg.read_bytes()))) == 1
    expected = np.asarray(load_image(jpeg))
    assert np.array_equal(np.asarray(load_image(io.BytesIO(jpeg.read_bytes()))), expected)
    with open(jpeg, "rb") as f:
        assert np.array_equal(np.asarray(load_image(f)), expected)


def test_encode_image_takes_file_objects_alone_and_in_lists(lite, jpeg):
    expected = lite.encode_image(str(jpeg))
    with open(jpeg, "rb") as f:
        np.testing.assert_allclose(lite.encode_image(f), expected, atol=1e-6)
    got = lite.encode_image([io.BytesIO(jpeg.read_bytes()), str(jpeg)])
    np.testing.assert_allclose(got, np.concatenate([expected, expected]), atol=1e-6)


def test_a_file_opened_in_text_mode_is_one_clear_error(jpeg):
    with open(jpeg) as f, pytest.raises(PolymodalError, match=r"text mode.*open\(path, 'rb'\)"):
        load_image(f)


def test_image_index_without_a_path_is_one_error():
    with pytest.raises(PolymodalError, match="ImageIndex takes the index folder's path, got NoneType"):
        ImageIndex(None)  # os.environ.get("DB") unset: was a bare TypeError from pathlib


def test_search_image_with_several_images_points_to_search(lite, jpeg, tmp_path):
    index = ImageIndex(tmp_path / "one.idx")
    index.add([jpeg], lite, progress=False)
    assert index.search_image(lite, jpeg, k=1)[0].path == str(jpeg.resolve())
    with pytest.raises(PolymodalError, match=r"one query image, got 2.*search\(model.encode_image\(images\), k\)"):
        index.search_image(lite, [jpeg, jpeg])


def test_help_of_the_main_objects_says_what_they_return():
    # DualEncoder (the `default` model) showed nn.Module's docstring; lite's showed a note for subclass authors
    assert "[N, embed_dim]" in inspect.getdoc(DualEncoder)
    assert "[N, 384]" in inspect.getdoc(ConSEModel)
    assert "caption(images)" in inspect.getdoc(Captioner) and inspect.getdoc(Captioner.save)
    load_doc = inspect.getdoc(polymodal.load)
    for returned in ("[N, dim]", "answer(image, question)", "caption(images)"):
        assert returned in load_doc
    assert "cosine" in inspect.getdoc(Hit) and '"count"' in inspect.getdoc(ImageIndex.info)
