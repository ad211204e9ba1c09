"""Review (stop 43) of the session's own changes: siblings of its fixes that were missed, and a cost it added."""

from __future__ import annotations

import json
import logging

import pytest
from PIL import Image


def test_vqa_export_leaves_an_unreadable_validation_photo_out(tmp_path, caplog, monkeypatch):
    """The embedding export leaves an unreadable validation photo out (cd724f4), as `eval vqa` does; the VQA export
    ended with "not a readable image" (after its graphs were written, or before them for the first row's)."""
    pytest.importorskip("onnxruntime")
    import polymodal.export.fusion_export as F
    from polymodal.eval.vqa import QARow
    from polymodal.models.fusion_encoder import FusionEncoder, FusionEncoderConfig

    class Exported(Exception):
        pass

    def export_graph(module, inputs, *args, **kwargs):  # the graphs' inputs were made: stop before the slow export
        raise Exported(inputs[0].shape)

    monkeypatch.setattr(F, "export_graph", export_graph)
    model = FusionEncoder(FusionEncoderConfig(fusion="cross_attention", dim=16, dropout=0.0, answers=["yes", "no"]))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [QARow(image=str(tmp_path / "broken.jpg"), question="is it red?", answer="no")]
    for i in range(3):
        Image.new("RGB", (64, 64), (80 * i, 40, 200)).save(tmp_path / f"{i}.png")
        rows.append(QARow(image=str(tmp_path / f"{i}.png"), question="is it blue?", answer="yes"))
    with caplog.at_level(logging.WARNING), pytest.raises(Exported):
        F.export_fusion_onnx(model.eval(), tmp_path / "out", rows, variants=[], timing_seconds=0.01)
    assert "left out 1 unreadable validation photo" in caplog.text
    broken = [QARow(image=str(tmp_path / "broken.jpg"), question="is it red?", answer="no")]
    with pytest.raises(F.PolymodalError, match="none of the 1 validation photo could be read"):
        F.export_fusion_onnx(model.eval(), tmp_path / "out2", broken, variants=[], timing_seconds=0.01)


def test_a_one_line_caption_json_is_parsed_once(tmp_path, monkeypatch):
    """COCO's and Karpathy's files are one line of JSON: it was parsed to see what it is, then parsed again (COCO's
    train2017 captions: 100 MB read in 2.6 s at 0.84 GB peak instead of 1.3 s at 0.42 GB)."""
    import json.decoder

    from polymodal.data.pairs import read_pair_source

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "1.jpg")
    document = {"info": {}, "images": [{"id": 1, "file_name": "1.jpg"}],
                "annotations": [{"image_id": 1, "id": k, "caption": f"a red square {k}"} for k in range(40)]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(document))
    parsed = []
    real = json.decoder.JSONDecoder.decode
    monkeypatch.setattr(json.decoder.JSONDecoder, "decode",
                        lambda self, s, *a, **k: (parsed.append(len(s)) if len(s) > 1000 else None) or real(self, s, *a, **k))
    pairs = read_pair_source(tmp_path / "captions_val2017.json")
    assert len(pairs.pairs) == 40 and pairs.pairs[3].caption == "a red square 3"
    assert len(parsed) == 1  # the whole file, once


def test_tensorboard_keeps_each_objectives_step_values_under_train():
    """123e799 kept a key holding "/" as its tag, meant for an epoch's "val/rsum"; a step's per-objective values
    ("contrastive/loss", pretraining's "itm/loss") then left train/ for a section of their own each."""
    from polymodal.train.metrics import scalar_tag

    assert scalar_tag("train", "contrastive/loss") == "train/contrastive/loss"
    assert scalar_tag("train", "loss") == "train/loss"
    assert scalar_tag("val", "val/rsum") == "val/rsum" and scalar_tag("val", "train_loss") == "epoch/train_loss"


def test_write_shards_drops_an_invisible_caption_as_reading_does(tmp_path):
    """Reading drops a caption of zero-width characters (51fa7e7) but write_shards stored it: the sample's per-caption
    negatives no longer lined up with its captions, and every caption of that photo lost its hard negatives."""
    from polymodal.data.pairs import Pair, read_pair_source
    from polymodal.data.shards import write_shards

    Image.new("RGB", (32, 32)).save(tmp_path / "sq.png")
    write_shards([Pair(tmp_path / "sq.png", "\u200b\u2060", negatives=("x",)),
                  Pair(tmp_path / "sq.png", "a black square", negatives=("a white square",))], tmp_path / "shards", 10)
    pairs = read_pair_source(tmp_path / "shards")
    assert [(p.caption, p.negatives) for p in pairs.pairs] == [("a black square", ("a white square",))]


def test_eval_out_that_cannot_be_written_is_refused_before_the_evaluation(tmp_path, monkeypatch, capsys):
    """train's and export's --out are checked before the work (b6f4045, f960eb3); eval's --out was found unwritable
    only at the end, after every photo was embedded (`--out /sys/items.jsonl` as root: Permission denied after the
    whole run), and an --out under a file was said to be under a folder that "does not exist"."""
    import polymodal
    import polymodal.cache as cache
    from polymodal.cli import main

    monkeypatch.setattr(polymodal, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a black square"}) + "\n")
    (tmp_path / "a-file").write_text("not a folder")
    pairs = str(tmp_path / "pairs.jsonl")
    assert main(["eval", "retrieval", "--model", "lite", "--pairs", pairs, "--out", str(tmp_path / "a-file" / "i.jsonl")]) == 2
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in capsys.readouterr().err

    def mkstemp(*args, **kwargs):  # a read-only file system (or no write permission), whoever runs the test
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", mkstemp)
    assert main(["eval", "retrieval", "--model", "lite", "--pairs", pairs, "--out", str(tmp_path / "i.jsonl")]) == 2
    assert f"cannot be written: Permission denied in {tmp_path}" in capsys.readouterr().err
