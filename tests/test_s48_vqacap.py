"""What a review of training and using VQA and captioning models on one's own data found (stop 48): a QA file whose
"answer_type" was written "Yes/No" on some rows and "yes/no" on others (or with a stray space) reported each spelling
as its own type in `eval vqa`'s per_type and training's val/acc_* figures, and split the untyped yes/no rows (typed
"yes/no") from the hand-typed ones. `polymodal vqa --help` said --model takes a "built-in name or fusion-encoder
folder", where the README (and `eval vqa --help`) gives it an ONNX export folder too."""

import json

from PIL import Image

from polymodal.eval.vqa import QARow, accuracy_by_type, read_qa


def test_answer_types_differing_in_case_or_spaces_are_one_type(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "is it red?", "answer": "yes", "answer_type": "Yes/No"},
            {"image": "a.png", "question": "is it blue?", "answer": "no", "answer_type": " yes/no "},
            {"image": "a.png", "question": "is it green?", "answer": "no"},  # untyped: "yes/no" by its answer
            {"image": "a.png", "question": "what colour?", "answer": "red", "answer_type": "Colour"},
            {"image": "a.png", "question": "which colour?", "answer": "red", "answer_type": "colour"},
            {"image": "a.png", "question": "what shape?", "answer": "square", "answer_type": "   "}]  # blank: inferred
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = accuracy_by_type(["yes", "yes", "no", "red", "blue", "square"], read_qa(qa))
    assert got["per_type_count"] == {"colour": 2, "other": 1, "yes/no": 3}
    assert got["per_type"] == {"colour": 0.5, "other": 1.0, "yes/no": 2 / 3}
    assert QARow("a.png", "q", "2", answer_type="Number ").type == "number"  # rows built in Python too


def test_vqa_help_says_model_takes_an_onnx_export():
    from test_s43_train_help import _subparser  # noqa: E402 (tests/ is on the path)

    model = next(a for a in _subparser("vqa")._actions if "--model" in a.option_strings)
    assert "ONNX export" in model.help
