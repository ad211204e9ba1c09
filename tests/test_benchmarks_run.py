"""Every benchmark the README quotes keeps running: a tiny run of each one no other test runs, checking the JSON lines
it prints (a benchmark nothing runs rots unseen, as MMF's fusion modules did). Speeds are not checked, only that
they are measured, and the parity each script reports beside them (cached decoding = rerun decoding; fused tower =
eager tower in test_s41_bench_context, whose end-to-end run of fused_tower.py checks its figures too)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _torch_threads():
    """Scripts set torch's thread count for their measurements; the rest of the suite keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_benchmark(name: str, argv: list, capsys) -> list[dict]:
    """Runs benchmarks/NAME.py's main(argv) in this process (no second torch import) -> its JSON lines."""
    spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        assert module.main([str(a) for a in argv]) == 0
    finally:
        sys.modules.pop(spec.name, None)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_train_throughput(capsys):
    *rows, speedups = run_benchmark("train_throughput", ["--batch", "4", "--steps", "1"], capsys)
    assert {r["setup"] for r in rows} == {"heads_cached", "heads_plain", "partial_cached", "partial_plain"}
    assert all(r["samples_per_s"] > 0 for r in rows) and set(speedups["speedup_cached_vs_plain"]) == {"heads", "partial"}


def test_caption_speed_keeps_the_captions_and_records_threads_and_the_policy(capsys):
    *rows, last = run_benchmark("caption_speed", ["--photos", "2", "--beam", "2", "--repeats", "1"], capsys)
    assert [r["decoding"] for r in rows] == ["cached", "rerun"] and all(r["photos_per_s"] > 0 for r in rows)
    assert last["same_captions"] is True  # keys and values kept between steps change no caption
    # (test_s40_bench_omp_policy: the policy is set before torch loads; each line says which it ran under)
    assert all(r["threads"] >= 1 and r["omp_wait_policy"] == os.environ["OMP_WAIT_POLICY"] for r in rows)


def test_embed_throughput(capsys):
    rows = run_benchmark("embed_throughput", ["--runtime", "torch", "--batches", "1,4", "--seconds", "0.05"], capsys)
    assert [(r["kind"], r["batch"]) for r in rows] == [("images", 1), ("texts", 1), ("images", 4), ("texts", 4)]
    assert all(r[f"{r['kind']}_per_s"] > 0 for r in rows)


def test_embed_throughput_leaves_out_bf16_on_a_cpu_without_it_and_alternates_runtimes(capsys, monkeypatch):
    """The README's `embed_throughput.py --model lite` (default runtimes torch,torch-bf16,onnx) ended in a traceback
    on a CPU without bf16 kernels, after timing PyTorch alone."""
    import polymodal.encoders.frozen_trunk as trunk

    monkeypatch.setattr(trunk, "bf16_supported", lambda: False)
    rows = run_benchmark("embed_throughput", ["--runtime", "torch,torch-bf16", "--batches", "1", "--seconds", "0.05"],
                         capsys)
    assert rows[0]["runtime"] == "torch-bf16" and "no bf16" in rows[0]["skipped"]
    assert [(r["runtime"], r["kind"]) for r in rows[1:]] == [("torch", "images"), ("torch", "texts")]


def test_pretrain_fusion(gallery, tmp_path, capsys):
    from polymodal.data.samples import sample_photos

    rows = [{"image": str(next(gallery.glob(f"{name}.*"))), "caption": caption}
            for name, (_, description) in sample_photos().items()
            for caption in (description, f"a photo of the {name}")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = run_benchmark("pretrain_fusion", ["--pairs", pairs, "--runs", "text_only,multitask", "--epochs", "1",
                                              "--batch-size", "8", "--dim", "32", "--out", tmp_path / "runs"], capsys)
    text_only, multitask, summary = lines
    assert (text_only["run"], multitask["run"]) == ("text_only", "multitask") and summary["summary"] is True
    assert text_only["held_out_images"] == 2 and text_only["train_captions"] + text_only["held_out_captions"] == 30
    for key in ("itm_pairwise_random_caption", "mlm_accuracy", "mlm_accuracy_images_zeroed"):
        assert 0.0 <= multitask[key] <= 1.0, key
    assert multitask["mrm_loss"] > 0 and "itm_pairwise_random_caption" not in text_only


def test_train_easy_vqa(tmp_path, capsys):
    pytest.importorskip("easy_vqa")
    data, result, best = run_benchmark("train_easy_vqa", [
        "--train-images", "12", "--test-images", "4", "--epochs", "1", "--batch-size", "32", "--dim", "32",
        "--data", tmp_path / "data", "--out", tmp_path / "runs"], capsys)
    assert data["train_questions"] > 0 and data["test_questions"] > 0
    assert result["fusion"] == "concat" and 0.0 <= result["test_accuracy"] <= 1.0 and result["epochs_run"] == 1
    assert (tmp_path / "runs" / "concat" / "model").is_dir() and best["best_fusion"] == "concat"


def test_vqa_choices(capsys):
    pytest.importorskip("easy_vqa")
    per_row, batched, cached, summary = run_benchmark("vqa_choices", ["--rows", "8", "--choices", "3"], capsys)
    assert (per_row["way"], batched["way"], cached["way"]) == ("answer_per_row", "predict_choices", "eval_warm_cache")
    assert per_row["rows"] == batched["rows"] == 8 and batched["rows_per_s"] > 0
    assert summary["same_choices"] == 1.0  # batching changes the speed, never the choice
    assert summary["multiple_choice_accuracy"] >= summary["open_accuracy"] - 1e-9  # the answer is always a choice
    assert abs(summary["multiple_choice_accuracy_cached"] - summary["multiple_choice_accuracy"]) <= 1 / 8
    assert summary["warm_cache_vs_predict_choices"] > 0


def test_vqa_choices_outside(tmp_path, capsys):
    pytest.importorskip("easy_vqa")
    lines = run_benchmark("vqa_choices_outside", ["--train-images", "40", "--test-rows", "12", "--epochs", "1",
                                                  "--out", tmp_path], capsys)
    assert {(r["itm_trained_on"], r["rule"]) for r in lines} == {
        (rows, rule) for rows in ("all rows", "known rows") for rule in ("mixed", "calibrated", "itm_all")}
    for r in lines:  # each line's rows are one group's; the truth is always among the choices
        assert r["rows"] > 0 and 0.0 <= r["picked_held_out"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
        if r["group"] == "truth_known":
            assert r["accuracy"] <= 1.0 - r["picked_held_out"] + 1e-9
    assert sum(r["rows"] for r in lines if r["rule"] == "mixed" and r["itm_trained_on"] == "all rows") == 12
    assert (tmp_path / "itm-all" / "model").is_dir() and (tmp_path / "A" / "model").is_dir()


def test_cli_startup(tmp_path, capsys):
    now, first, ratio = run_benchmark("cli_startup", ["--repeats", "1", "--out", tmp_path], capsys)
    assert (now["way"], first["way"]) == ("now", "clip_loaders_first") and now["runs"] == first["runs"] == 1
    assert now["median_s"] > 0 and ratio["clip_loaders_first_over_now"] > 0
    assert (tmp_path / "pics.idx").is_dir() and (tmp_path / "model" / "config.json").is_file()


def test_image_centering(gallery, tmp_path, capsys, lite):
    from polymodal.data.samples import sample_photos
    from polymodal.eval.retrieval import read_pairs, retrieval_metrics

    photos = sorted(sample_photos().items())
    files = []
    for part, chosen in (("test", photos[::2]), ("ref", photos[1::2])):
        rows = [{"image": str(gallery / f"{name}.jpg"), "caption": description} for name, (_, description) in chosen]
        files.append(tmp_path / f"{part}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    shipped, moved = run_benchmark("image_centering", ["--pairs", files[0], "--ref-pairs", files[1], "--models", "lite",
                                                       "--betas", "0", "1"], capsys)
    test = read_pairs(files[0])
    plain = retrieval_metrics(lite.encode_image(test.images), lite.encode_text(test.captions), test.caption_image)
    assert (shipped["beta"], moved["beta"]) == (0.0, 1.0) and shipped["ref_images"] == len(photos[1::2])
    assert {k: shipped[k] for k in plain} == plain  # beta 0 is the model as shipped
    assert 0.0 <= moved["i2t_R@1"] <= 1.0


def test_image_centering_refuses_a_reference_that_shares_photos(gallery, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(gallery / "cat.jpg"), "caption": "a cat"}) + "\n")
    spec = importlib.util.spec_from_file_location("_benchmark_image_centering", BENCHMARKS / "image_centering.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--pairs", str(pairs), "--ref-pairs", str(pairs)]) == 2
    assert "share photos" in capsys.readouterr().err
    rows = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(module.centered(rows, rows.mean(0), 1.0), [[2 ** -0.5, -(2 ** -0.5)], [-(2 ** -0.5), 2 ** -0.5]])
