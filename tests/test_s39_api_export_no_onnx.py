"""`polymodal export onnx coco-yesno --val-qa FILE` says coco-yesno has no ONNX form, not that it is no VQA model."""

import pytest

from polymodal.cli import main


@pytest.mark.parametrize("extra", [[], ["--val-qa", "missing-questions.jsonl"]])
def test_export_of_coco_yesno_says_it_has_no_onnx_form(extra, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    assert main(["export", "onnx", "coco-yesno", *extra]) == 2
    err = capsys.readouterr().err
    assert "no ONNX form" in err and "logistic regression" in err, err
    assert "VQA models such as" not in err
