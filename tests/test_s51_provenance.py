"""What a model folder or an export says about itself (helper s51/provenance).

- A model folder shared alone (RUN/model without RUN/train_config.json) did not say how it was trained: no seed, no
  data, no command. Training now saves RUN/model/trained_with.json (the run's settings, the command line, the
  polymodal that ran it) beside the weights, not inside config.json (the polymodal versions out there refuse a key
  they do not know); `polymodal info --model FOLDER` shows it. Folders without it load and show "not recorded".
- An export of a built-in written with `--out DIR` and loaded by its path after an upgrade re-shipped the built-in
  served the older weights under the built-in's name without a word (the cached export is refused since stop 50).
  Loading it by path warns, naming both versions and the command that exports today's.
- A full disk while an int8 variant was built was recorded as the variant "failed" and the export served fp32 with
  exit 0 (onnxruntime's calibration copies in a full TMPDIR: "failed here: OSError: [Errno 28]"); on the export's
  own disk the quantizer's truncated shape-inferred copy read back as "DecodeError: Wire format was corrupt" and,
  left behind, filled the disk. The export now stops with the full disk's error, naming the disk.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import sys
import tempfile
from collections import namedtuple

import pytest

import polymodal
from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.resources import HERE

SHIPPED = json.loads((HERE / "models" / "default" / "config.json").read_text())["version"]


# -- 1. a model folder says how it was trained ------------------------------------------------------------------


def test_a_trained_model_folder_says_how_it_was_trained_and_older_folders_still_load(gallery, tmp_path, monkeypatch,
                                                                                      capsys):
    pairs = tmp_path / "pairs.jsonl"  # (not in the shared gallery)
    pairs.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": desc}) + "\n"
                             for name, (_, desc) in SKIMAGE_PHOTOS.items()))
    run = tmp_path / "run"
    argv = ["train", "contrastive", "--pairs", str(pairs), "--val-pairs", str(pairs), "--out", str(run), "--quiet",
            "--embed-dim", "16", "--epochs", "1", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/polymodal", *argv])
    assert cli.main(argv) == 0
    capsys.readouterr()
    model = run / "model"
    record = json.loads((model / "trained_with.json").read_text())
    assert record["command"] == ["polymodal", *argv] and record["polymodal"] == polymodal.__version__
    assert record["settings"]["train"]["seed"] == 3 and record["settings"]["pairs"] == [str(pairs.resolve())]
    assert record["settings"] == json.loads((run / "train_config.json").read_text())
    assert "trained_with" not in json.loads((model / "config.json").read_text())  # older polymodals refuse new keys
    key = polymodal.load(str(model)).key

    assert cli.main(["info", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^seed +3$", out, re.M) and f"polymodal train contrastive --pairs {pairs}" in out
    assert cli.main(["info", "--model", str(run), "--json"]) == 0  # a run folder: its model
    shown = json.loads(capsys.readouterr().out)["model"]
    assert shown["key"] == key and shown["trained_with"] == record

    (model / "trained_with.json").unlink()  # a folder saved before polymodal kept the record
    assert polymodal.load(str(model)).key == key
    assert cli.main(["info", "--model", str(model)]) == 0
    assert re.search(r"^trained with +not recorded", capsys.readouterr().out, re.M)


def test_info_of_something_that_is_no_model_folder_is_one_line(tmp_path, capsys):
    for name, says in (("lite", "no model folder"), (str(tmp_path), "not a model folder")):
        assert cli.main(["info", "--model", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err


# -- 2. an --out export of a built-in since re-shipped ----------------------------------------------------------


def _export_named(folder, name: str, version: str):
    """An export folder stamped with ``name`` and ``version`` (its graphs are not needed: the check comes first)."""
    folder.mkdir()
    (folder / "onnx_config.json").write_text(json.dumps({"type": "onnx_embedding", "name": name, "version": version,
                                                         "dim": 384}))
    return folder


def _warnings_of_loading(folder, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(PolymodalError):  # it gets as far as its missing graphs
        polymodal.load(str(folder), runtime="onnx")
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_out_export_of_an_older_builtin_warns_when_loaded_by_path(tmp_path, caplog):
    old = _export_named(tmp_path / "old", "default", "3add725d407c")  # `default` as shipped before 69b841c
    said = _warnings_of_loading(old, caplog)
    assert len(said) == 1, said
    assert (f"{old} is an ONNX export of an older default (version 3add725d407c; this polymodal's is {SHIPPED}): it "
            f"serves that older model; for today's, export it again with `polymodal export onnx default --out {old}`"
            ) == said[0]
    assert _warnings_of_loading(_export_named(tmp_path / "today", "default", SHIPPED), caplog) == []
    assert _warnings_of_loading(_export_named(tmp_path / "mine", "mine", "3add725d407c"), caplog) == []


# -- 3. a full disk while an int8 variant is built ---------------------------------------------------------------


def test_a_variant_failing_for_lack_of_space_stops_the_export(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip
    from test_onnx import _few_photos

    import polymodal.export.variants as V
    from polymodal.export.onnx_export import export_onnx
    from polymodal.models.clip import load_clip

    skip_unless_clip_exports()

    def full(src, dst, calibration=None):  # as onnx.save raises it in a full TMPDIR: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(V, "int8_dynamic", full)
    model = load_clip(make_tiny_clip(tmp_path / "tiny-clip"))
    with pytest.raises(OSError) as caught:  # was: the variant "failed", fp32 served, no error
        export_onnx(model, tmp_path / "out", _few_photos(), variants=["int8_dynamic"], timing_seconds=0.02)
    assert caught.value.errno == errno.ENOSPC and not (tmp_path / "out").exists()


Usage = namedtuple("Usage", "total used free")


def test_the_quantizers_truncated_copy_on_a_full_disk_is_a_full_disk_and_is_removed(tmp_path, monkeypatch):
    from google.protobuf.message import DecodeError

    from polymodal.export.variants import _atomic

    source = tmp_path / "text.fp32.onnx"
    source.write_bytes(b"graph")
    inferred = tmp_path / "text.fp32-inferred.onnx"

    def truncated(tmp):  # onnx's C++ writes the shape-inferred copy until the disk is full, then it fails to parse
        inferred.write_bytes(b"half a graph")
        raise DecodeError("Error parsing message with type 'onnx.ModelProto': Wire format was corrupt")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 << 20, 100 << 20, 4096))
    with pytest.raises(OSError) as caught:
        _atomic(truncated, tmp_path / "text.int8_dynamic.onnx", source)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "text.int8_dynamic.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.fp32.onnx"]  # the copy no longer fills the disk

    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 << 20, 0, 100 << 20))  # a roomy disk
    with pytest.raises(DecodeError):  # another failure stays a finding for the report
        _atomic(truncated, tmp_path / "text.int8_dynamic.onnx", source)
    assert not inferred.exists()

    def full_elsewhere(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="in the temporary folder") as caught:
        _atomic(full_elsewhere, tmp_path / "text.int8_static.onnx", source)
    assert caught.value.filename == tempfile.gettempdir()
