"""Stop 49's second review of the Parquet, Unicode and export changes (helper s49/diffreview2): photos inside a
Parquet question file reach the models that open no "<file>#<row>" (answered without the feature cache, exported
VQA validation), and a Parquet labels file is opened once for its class names, not once per row."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from polymodal.data import parquet_rows
from polymodal.data.images import load_image

COLOURS = {"red": (250, 20, 20), "green": (20, 250, 20), "blue": (20, 20, 250)}


def _jpeg(rgb) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 32), rgb).save(out, "JPEG", quality=95)
    return out.getvalue()


def _colour(image) -> str:
    """The colour a photo is, read as the models read their images (a path or bytes; no "<file>#<row>")."""
    pixel = load_image(image).getpixel((10, 10))
    return min(COLOURS, key=lambda w: sum(abs(a - b) for a, b in zip(COLOURS[w], pixel)))


class _ColourModel:
    """A VQA model answered without the feature cache (as coco-yesno and ONNX exports are): it opens each image."""

    def predict(self, images, questions):
        return [(_colour(image), 1.0) for image in images]

    def transform(self, images):
        return [_colour(image) for image in images]


def _vqa_parquet(path):
    words = list(COLOURS)
    pq.write_table(pa.table({"image": [{"bytes": _jpeg(COLOURS[w]), "path": None} for w in words],
                             "question": ["what colour is it?"] * 3, "answer": words}), path, row_group_size=2)
    return path


def test_a_parquet_question_file_is_answered_by_a_model_that_opens_its_photos(tmp_path):
    from polymodal.eval.vqa import answer_rows, read_qa

    rows = read_qa(_vqa_parquet(tmp_path / "qa.parquet"))
    answered, _ = answer_rows(_ColourModel(), rows)  # "image not found: qa.parquet#0" for every row before
    assert answered == [("red", 1.0), ("green", 1.0), ("blue", 1.0)]


def test_a_vqa_export_validates_on_a_parquet_question_file(tmp_path):
    from polymodal.eval.vqa import read_qa
    from polymodal.export.fusion_export import _readable_rows

    rows = _readable_rows(_ColourModel(), read_qa(_vqa_parquet(tmp_path / "qa.parquet")))
    assert [_colour(r.image) for r in rows] == ["red", "green", "blue"]  # "none ... could be read" before


def test_a_parquet_labels_file_is_opened_once_for_its_class_names(tmp_path, monkeypatch):
    from polymodal.eval.zeroshot import read_labelled_images

    names = ["cat", "dog"]
    meta = {"info": {"features": {"img": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}}}
    table = pa.table({"img": [{"bytes": _jpeg((9 * i, 0, 0)), "path": None} for i in range(20)],
                      "label": [i % 2 for i in range(20)]})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}), tmp_path / "test.parquet")
    opened, real_open = [], parquet_rows._open
    monkeypatch.setattr(parquet_rows, "_open", lambda path: opened.append(path) or real_open(path))
    images, labels = read_labelled_images(tmp_path / "test.parquet")
    assert labels == names * 10 and len(images) == 20
    assert len(opened) <= 2  # the rows, and the schema's class names once (21 opens before: one per row)


def test_class_folders_resolve_each_photo_once(tmp_path, monkeypatch):
    import pathlib

    from polymodal.eval.zeroshot import class_folders

    for label in ("cat", "dog"):
        (tmp_path / label / "more").mkdir(parents=True)
        for i in range(3):
            (tmp_path / label / f"{i}.jpg").write_bytes(b"")
        (tmp_path / label / "more" / "3.jpg").write_bytes(b"")
    resolved, real = [], pathlib.Path.resolve
    monkeypatch.setattr(pathlib.Path, "resolve", lambda self, *a, **k: resolved.append(self) or real(self, *a, **k))
    images, labels = class_folders(tmp_path)
    assert labels == ["cat"] * 4 + ["dog"] * 4
    assert len(resolved) == 8  # 14 before: a class's own photos resolved again to see whether it held any
