"""Fusion settings a training run would only trip over after caching every photo are refused up front."""

import pytest

from polymodal.errors import PolymodalError
from polymodal.models.fusion_encoder import FusionEncoderConfig


def test_single_stream_max_len_below_the_grid_is_refused_at_once():
    with pytest.raises(PolymodalError, match=r"max_len 10 is below the 49 tokens.*max_len=49"):
        FusionEncoderConfig(fusion="single_stream", fusion_options={"max_len": 10}).validate()
    with pytest.raises(PolymodalError, match=r"below the 60 tokens"):  # the question is the longer modality
        FusionEncoderConfig(fusion="single_stream", fusion_options={"max_len": 50}, max_question_tokens=60).validate()
    FusionEncoderConfig(fusion="single_stream", fusion_options={"max_len": 49}).validate()
    FusionEncoderConfig(fusion="single_stream", fusion_options={"max_len": 16}, image_size=128,
                        max_question_tokens=16).validate()  # 4x4 grid


def test_cli_refuses_before_encoding_anything(tmp_path, monkeypatch):
    import json

    from PIL import Image

    from polymodal.cli import main

    rows = []
    for i in range(4):
        Image.new("RGB", (64, 64), (i * 60, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": "is it red?", "answer": "yes" if i % 2 else "no"})
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    code = main(["train", "vqa", "--qa", str(tmp_path / "qa.jsonl"), "--fusion", "single_stream",
                 "--fusion-options", '{"max_len": 10}', "--out", str(tmp_path / "run")])
    assert code == 2
    assert not (tmp_path / "cache").exists()  # no photo was encoded and cached first
