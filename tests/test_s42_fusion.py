"""What a review of the fusion modules and `train vqa` found (stop 42): a list `hidden` for concat or late fusion
passed the option check and failed inside nn.Linear as a TypeError; `train vqa --itm-weight` cut "question answer"
at the tower's limit, so a long question's matching and wrong ITM texts were the same (multiple choice scores the
answer kept whole); benchmarks/fusion_compare.py without the COCO yes/no file ended in a traceback (after training
every easy-VQA fusion); `train vqa --help` did not list `vqa` among the parts --freeze takes."""

import contextlib
import io
import json

import pytest
from PIL import Image

from polymodal.errors import PolymodalError
from polymodal.fusion import build_fusion
from test_s40_bench_missing_data import _main



@pytest.mark.parametrize("name, hidden", [("concat", [4, 4]), ("late", (4,)), ("late", [4, 4])])
def test_a_list_hidden_for_a_fusion_with_one_hidden_size_is_one_clear_error(name, hidden):
    with pytest.raises(PolymodalError, match=f"{name} fusion: hidden must be a whole number"):
        build_fusion(name, [4, 4], 8, hidden=hidden)


def test_tensor_fusion_still_takes_one_hidden_size_per_modality():
    fusion = build_fusion("tensor", [4, 6], 8, hidden=[3, 5])
    assert fusion.size == 4 * 6
    with pytest.raises(PolymodalError, match="hidden must be a whole number"):
        build_fusion("tensor", [4, 6], 8, hidden=[3, 0])


def test_itm_training_texts_keep_the_answer_of_a_long_question(tmp_path, monkeypatch):
    import polymodal.train.vqa as vqa

    long_q = ("looking carefully at the whole picture from the left edge to the right edge and from the top to the "
              "bottom, what colour is the big shape in the middle?")
    rows = []
    for i, colour in enumerate(["red", "blue", "red", "blue"]):
        Image.new("RGB", (32, 32), (200 * (colour == "red"), 10 * i, 200 * (colour == "blue"))).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "question": long_q, "answer": colour})
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    calls = []
    real = vqa.question_features

    class Seen(Exception):
        pass

    def recording(model, texts, **kw):
        calls.append((model, list(texts)))
        if len(calls) == 2:  # the second call encodes the ITM texts: enough seen
            raise Seen
        return real(model, texts, **kw)

    monkeypatch.setattr(vqa, "question_features", recording)
    recipe = vqa.VQARecipe(qa=str(tmp_path / "qa.jsonl"), out=str(tmp_path / "run"), val_fraction=0.0,
                           itm_weight=0.5, arch={"fusion": "concat", "dim": 16, "itm_head": True},
                           train={"epochs": 1})
    with pytest.raises(Seen):
        vqa.train_vqa(recipe, progress=False)
    model, texts = calls[1]
    ids = model.text_tower.tokenize(texts)["input_ids"]
    # "Q red" and "Q blue" (each row's matching and wrong text) must stay apart once tokenized
    assert len({tuple(row.tolist()) for row in ids}) == len(texts) == 2
    assert texts == [model._itm_text(long_q, "red"), model._itm_text(long_q, "blue")]


def test_fusion_compare_without_the_coco_yesno_file_says_so_before_training(tmp_path, capsys):
    missing = tmp_path / "nothing.jsonl"
    code = _main("fusion_compare").main(["--datasets", "coco-yesno", "--coco-yesno", str(missing), "--quick",
                                              "--quiet", "--data-dir", str(tmp_path / "data"),
                                              "--out", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_train_vqa_help_lists_vqa_among_the_parts_to_freeze():
    from polymodal import cli

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        cli.main(["train", "vqa", "--help"])
    text = " ".join(printed.getvalue().split())
    start = text.index("--freeze FREEZE", text.index("options:"))
    freeze = text[start:text.index("--config CONFIG", start)]
    assert "vqa" in freeze and "fusion" in freeze
