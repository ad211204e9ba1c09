"""Audit s46 of the files polymodal writes: an export from Python is built in a hidden stage and swapped in (it wrote
straight into its folder: one interrupted half-way into an earlier export left a mix of the two models), the demo's
page and query photo are written whole then renamed, and an index under a regular file is one polymodal error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import polymodal
from polymodal.cache import staged_folder
from polymodal.errors import PolymodalError


def test_a_stage_given_to_staged_folder_is_filled_as_it_is(tmp_path):
    """`polymodal export` stages, then calls export_onnx, which stages too: no stage inside the stage (a hidden
    folder named after the stage, which no later run would clean up)."""
    out = tmp_path / "export"
    with staged_folder(out) as stage:
        with staged_folder(stage) as inner:
            assert inner == stage
            (inner / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip

    skip_unless_clip_exports()
    return polymodal.load(str(make_tiny_clip(tmp_path_factory.mktemp("s46") / "tiny-clip")))


class Stopped(Exception):
    """Stands for Ctrl-C or a full disk (a KeyboardInterrupt escaping a failing test would end the whole run)."""


def _stop_at_the_first_graph(monkeypatch):
    import polymodal.export.onnx_export as E

    def interrupted(*args, **kwargs):
        raise Stopped  # while the first graph is traced

    monkeypatch.setattr(E, "export_graph", interrupted)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    return E.ValidationSet(photos, ["a photo", "another photo"], np.arange(2), "two photos")


def test_an_interrupted_export_from_python_leaves_the_earlier_export_as_it_was(tiny_clip, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from polymodal.export.onnx_export import export_onnx

    out = tmp_path / "onnx"
    out.mkdir()
    earlier = {"onnx_config.json": b'{"type": "onnx_embedding"}', "tokenizer.json": b"{}",
               "image.fp32.onnx": b"earlier graph", "text.fp32.onnx": b"earlier graph"}
    for name, data in earlier.items():
        (out / name).write_bytes(data)
    val = _stop_at_the_first_graph(monkeypatch)
    with pytest.raises(Stopped):
        export_onnx(tiny_clip, out, val, variants=[], timing_seconds=0.01)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # tokenizer.json was rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # and no stage is left beside it


def test_an_export_from_python_refuses_a_folder_of_other_files(tiny_clip, tmp_path, monkeypatch):
    """The export replaces its whole folder now: other files in it would be deleted, so it is refused (as the CLI
    refuses it), before anything is written there."""
    pytest.importorskip("onnxruntime")
    from polymodal.export.onnx_export import export_onnx

    (tmp_path / "notes.txt").write_text("mine")
    val = _stop_at_the_first_graph(monkeypatch)
    with pytest.raises(PolymodalError, match="holds files that are not a polymodal export \\(notes.txt\\)"):
        export_onnx(tiny_clip, tmp_path, val, variants=[], timing_seconds=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PolymodalError, match="a-file is a file, not a folder"):
        export_onnx(tiny_clip, tmp_path / "a-file" / "onnx", val, variants=[], timing_seconds=0.01)


def test_an_index_under_a_regular_file_is_one_polymodal_error(tiny_clip, tmp_path):
    from polymodal.index import ImageIndex

    (tmp_path / "a-file.jpg").write_bytes(b"x")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    index = ImageIndex(tmp_path / "a-file.jpg" / "sub.idx")
    with pytest.raises(PolymodalError, match="a-file.jpg is a file, not a folder"):
        index.add([tmp_path / "red.png"], tiny_clip)  # was a NotADirectoryError
    with pytest.raises(PolymodalError, match="a-file.jpg is a file, not a folder"):
        index.update(tmp_path, tiny_clip)


def test_the_demo_query_photo_is_replaced_whole(tmp_path, monkeypatch):
    import polymodal.demo as demo

    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.new("RGB", (100, 80), "brown").save(gallery / "coffee.jpg")
    query = demo._query_image(gallery, tmp_path)
    good = query.read_bytes()

    def disk_full(im, fp, filename):  # the encoder writes part of the photo, then the disk is full
        fp.write(b"\xff\xd8 half a jpeg")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "JPEG", disk_full)
    with pytest.raises(OSError):
        demo._query_image(gallery, tmp_path)
    assert query.read_bytes() == good  # was cut to the 14 bytes written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery", query.name]  # no temporary file left


def test_the_demo_page_is_replaced_whole(tmp_path):
    """Written to a temporary file and renamed: a hard link to the old page keeps the old page (written in place,
    the old page was overwritten as the new one was written)."""
    import polymodal.demo as demo

    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.jpg")
    page = demo._write_page(tmp_path, [], [])
    old = page.read_text()
    os.link(page, tmp_path / "old.html")
    demo._write_page(tmp_path, [], [(tmp_path / "red.jpg", "a red square")])
    assert "a red square" in page.read_text() and (tmp_path / "old.html").read_text() == old
