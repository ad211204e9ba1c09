"""benchmarks/fusion_compare.py: a --quick run on a tiny easy-VQA subset for two fusions gives one JSON line per
dataset and per fusion with the reported fields, a summary line, and a Markdown table with one row per fusion."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fusion_compare.py"


@pytest.fixture(scope="module")
def fusion_compare():
    spec = importlib.util.spec_from_file_location("_fusion_compare_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_epochs_flag(fusion_compare):
    both = ["easy-vqa", "coco-yesno"]
    assert fusion_compare._epochs(None, both, 6) == {"easy-vqa": 6, "coco-yesno": 6}
    assert fusion_compare._epochs("3", both, 6) == {"easy-vqa": 3, "coco-yesno": 3}
    assert fusion_compare._epochs("easy-vqa=2", both, 6) == {"easy-vqa": 2, "coco-yesno": 6}
    with pytest.raises(SystemExit):
        fusion_compare._epochs("easy-vqa=two", both, 6)
    with pytest.raises(SystemExit):
        fusion_compare._epochs("nope=2", both, 6)


def test_quick_run_writes_json_lines_and_markdown(fusion_compare, tmp_path, capsys, monkeypatch):
    pytest.importorskip("easy_vqa")
    monkeypatch.setitem(fusion_compare.QUICK, "easy_train_images", 12)  # smaller still than --quick: a fast test
    monkeypatch.setitem(fusion_compare.QUICK, "easy_test_images", 5)
    md = tmp_path / "table.md"
    code = fusion_compare.main(["--quick", "--datasets", "easy-vqa", "--fusions", "concat,gated", "--quiet",
                                "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs"),
                                "--markdown", str(md)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [line["kind"] for line in lines] == ["dataset", "fusion", "fusion", "summary"]

    dataset = lines[0]
    assert dataset["dataset"] == "easy-vqa" and dataset["epochs"] == 1
    assert dataset["test_questions"] > 0 and dataset["fit_questions"] > 0 and dataset["val_questions"] > 0
    assert 0 <= dataset["majority_test_accuracy"] <= 1 and dataset["majority_answer"]
    assert dataset["cache_seconds"] >= 0 and dataset["cached_images"] == (
        dataset["fit_images"] + dataset["val_images"] + dataset["test_images"])
    assert dataset["image_tower_ms_per_image"] > 0 and dataset["text_tower_ms_per_question"] > 0

    fusions = lines[1:3]
    assert [f["fusion"] for f in fusions] == ["concat", "gated"]
    for f in fusions:
        assert f["dataset"] == "easy-vqa"
        assert 0 <= f["test_accuracy"] <= 1 and f["test_questions"] == dataset["test_questions"]
        assert 0 < f["fusion_params"] < f["params"]
        assert f["train_seconds"] >= 0 and f["epochs_run"] == 1
        assert f["inference_ms_per_sample"] > 0 and f["inference_batch"] == 256
        assert f["answers"] > 2  # easy-VQA answers: shapes, colours, yes/no
        assert (tmp_path / "runs" / "easy-vqa" / f["fusion"] / "model" / "config.json").is_file()
    assert fusions[0]["params"] != fusions[1]["params"]

    summary = lines[3]
    assert summary["fusions"] == ["concat", "gated"] and summary["quick"] is True and summary["elapsed_seconds"] > 0

    text = md.read_text()
    assert "**easy-VQA**" in text and "COCO" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| fusion | test acc |")
    assert rows[1].startswith("| --- |")
    assert [r.split("|")[1].strip() for r in rows[2:]] == ["concat", "gated"]
