"""Stop 51: what stop 50's benchmark review left.
- captioning.py had no way to shrink its data (a full run takes over 10 minutes), so nothing kept it from rotting:
  `--photos N` takes the first N photos of each set;
- fused_tower_rewrites.py found a missing --pairs/--photos only after its tower part ran (minutes), and exited 1;
- train_caching.py with `--parts questions` and no QA file exited 0 with an empty result."""

from __future__ import annotations

import pytest

from conftest import benchmark_module, shared_data
from test_benchmarks_run import run_benchmark


def test_captioning_runs_small_with_photos(capsys):
    shared_data("flickr8k-dev"), shared_data("coco-mini-train")
    # 10, the fewest the script takes: its split still holds out 2 Flickr8k photos
    lines = run_benchmark("captioning", ["--photos", "10", "--epochs", "1", "--beam", "1", "--no-repeat", "0"], capsys)
    scored = {(line["system"], line["set"]): line for line in lines if "system" in line}
    assert set(scored) == {(system, name) for system in ("captioner beam 1 no-repeat 0", "retrieval lite")
                           for name in ("flickr8k-heldout", "coco-mini")}
    assert all(0 < line["photos"] <= 10 and 0 <= line["cider"] for line in scored.values())
    assert scored["retrieval lite", "coco-mini"]["photos"] == 10


def test_captioning_refuses_too_few_photos(capsys):
    with pytest.raises(SystemExit) as stop:
        benchmark_module("captioning", "s51").main(["--photos", "3"])
    assert stop.value.code == 2 and "--photos 3 is too few" in capsys.readouterr().err


def test_fused_tower_rewrites_checks_its_data_before_the_tower_part(tmp_path, capsys, monkeypatch):
    module = benchmark_module("fused_tower_rewrites", "s51")
    monkeypatch.setattr(module, "tower", lambda *a: pytest.fail("the tower part ran before the data was checked"))
    assert module.main(["--commands", "train", "--pairs", str(tmp_path / "none.jsonl")]) == 2
    assert "no pairs file at" in capsys.readouterr().err
    assert module.main(["--commands", "index", "--photos", str(tmp_path / "none")]) == 2
    assert "no photo folder at" in capsys.readouterr().err


def test_train_caching_with_only_questions_and_no_qa_file_is_an_error(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"image": "a.jpg", "caption": "a dog"}\n')
    module = benchmark_module("train_caching", "s51")
    assert module.main(["--pairs", str(pairs), "--qa", str(tmp_path / "none.jsonl"), "--parts", "questions"]) == 2
    assert "no QA file at" in capsys.readouterr().err
