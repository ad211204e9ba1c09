"""A data file's row whose image is missing names the path that was tried: relative paths are read from the data
file's folder, which a user running from another folder does not expect ("image file not found: cat.jpg" while
cat.jpg sits in the working directory)."""

import json
import logging

import pytest
from PIL import Image

from polymodal.data.pairs import read_pair_source
from polymodal.errors import PolymodalError
from polymodal.eval.vqa import read_qa
from polymodal.eval.zeroshot import read_labelled_images


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """cat.jpg in the working directory, data files in sub/ naming it as if paths were relative to the working one."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32), "red").save("cat.jpg")
    (tmp_path / "sub").mkdir()
    rows = {"pairs": {"image": "cat.jpg", "caption": "a cat"}, "qa": {"image": "cat.jpg", "question": "is it red?",
            "answer": "yes"}, "labels": {"image": "cat.jpg", "label": "cat"}}
    for name, row in rows.items():
        (tmp_path / "sub" / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path


@pytest.mark.parametrize("read, name", [(read_pair_source, "pairs"), (read_qa, "qa"), (read_labelled_images, "labels")])
def test_the_reason_names_the_path_tried_and_that_the_file_exists_elsewhere(layout, read, name, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(PolymodalError) as err:
        read(f"sub/{name}.jsonl")
    text = str(err.value) + caplog.text
    assert "image file not found: cat.jpg, read as sub/cat.jpg (paths are relative to the data file" in text
    assert "exists relative to the working directory" in text


def test_a_missing_image_nowhere_gets_no_working_directory_hint(layout, caplog):
    (layout / "sub" / "gone.jsonl").write_text(json.dumps({"image": "gone.jpg", "question": "red?", "answer": "no"}))
    with caplog.at_level(logging.WARNING), pytest.raises(PolymodalError) as err:
        read_qa("sub/gone.jsonl")
    text = str(err.value) + caplog.text
    assert "image file not found: gone.jpg, read as sub/gone.jpg (paths are relative to the data file)" in text
