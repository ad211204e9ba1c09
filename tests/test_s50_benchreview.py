"""Stop 50's review of benchmarks/: each script run on its smallest mode. What it found, each checked here:
- coco_yesno.py's pair ranking printed `"fraction": NaN` (not JSON) on a --qa file with no phrase asked both ways;
- eight scripts' --help stopped mid-sentence (their description was the docstring's first line, not its first
  paragraph), e.g. heap_reuse.py: "... against glibc's default:";
- index_runtime.py on a folder without photos, and caption_speed.py --onnx with a folder that is no export, ended in
  a traceback;
- train_caching.py, contrastive_cv.py and hard_negatives.py left a folder in /tmp per run (fold checkpoints, model
  runs, a feature cache), and train_caching.py left POLYMODAL_CACHE pointing at its folder: a test calling its
  main() in-process (test_s44_trainspeed) moved the rest of that pytest worker's caches into /tmp for good."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import numpy as np
import pytest
import torch

from conftest import benchmark_module
from test_benchmarks_run import BENCHMARKS, run_benchmark
from test_s44_trainspeed import text_parts_config

PROGRAMS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch):
    """tempfile's folder moved to this test's own: whatever a script leaves in "/tmp" is seen here."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _torch_threads():
    threads = torch.get_num_threads()  # scripts set torch's threads for their measurements
    yield
    torch.set_num_threads(threads)


def test_pair_ranking_without_pairs_prints_null_not_nan():
    module = benchmark_module("coco_yesno", "s50")
    rows = [{"question": "Is this a zoo?", "answer": "yes", "path": "a.jpg"}]
    pairs, fraction = module.pair_ranking(rows, np.zeros(1), np.zeros(1, dtype=int))
    assert pairs == 0 and fraction is None  # NaN before: json.dumps printed it, strict JSON parsers refuse it
    assert json.loads(json.dumps({"fraction": fraction, "pairs": pairs}, allow_nan=False))["fraction"] is None


@pytest.mark.parametrize("name", PROGRAMS)
def test_help_describes_the_script_in_whole_sentences(name, monkeypatch, capsys):
    """--help's description (its first paragraph) ends a sentence: a docstring's first line cut mid-sentence
    ("..., and how") does not."""
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS"):  # some scripts set them on import: undone after the test
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # their helpers (run_context, coco_yesno); sys.path restored after
    monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
    module = benchmark_module(name, "s50help")
    with pytest.raises(SystemExit) as done:
        module.main()
    assert done.value.code == 0
    out = capsys.readouterr().out
    first = " ".join(out.split("\n\n")[1].split())  # the description's first paragraph (after the usage)
    assert re.search(r"[.?!)]$", first), f"{name}.py --help: ...{first[-80:]!r}"


def test_train_caching_leaves_no_folder_and_the_cache_setting_as_it_found_it(scratch_tmp, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "mine"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": "a.jpg", "caption": c}) + "\n" for c in ("a dog", "two cats")))
    *lines, ratios = run_benchmark("train_caching", ["--pairs", pairs, "--parts", "text",
                                                     "--config", text_parts_config(tmp_path)], capsys)
    assert [line["way"] for line in lines if "way" in line] == ["caption_order", "length_order"]
    assert set(ratios["speedup_old_over_new_cpu"]) == {"text_caching"}
    assert os.environ["POLYMODAL_CACHE"] == str(tmp_path / "mine")
    assert not list(scratch_tmp.glob("train-caching-*"))


def test_contrastive_cv_leaves_no_fold_runs_behind(gallery, scratch_tmp, tmp_path, capsys):
    pairs = _gallery_pairs(gallery, tmp_path / "pairs.jsonl")
    *folds, pooled = run_benchmark("contrastive_cv", ["--pairs", pairs, "--folds", "2", "--set", "train.epochs=1",
                                                      "arch.embed_dim=32", "batch_size=8"], capsys)
    assert [f["fold"] for f in folds] == [0, 1] and pooled["pool_images"] == sum(f["held_out"] for f in folds)
    assert 0.0 <= pooled["t2i_R@1"] <= 1.0 and "out" not in pooled["recipe"]  # (out named the removed folder)
    assert not list(scratch_tmp.glob("cv-*"))


def test_hard_negatives_leaves_no_runs_behind(gallery, scratch_tmp, tmp_path, capsys):
    module = benchmark_module("hard_negatives", "s50")
    (tmp_path / "data" / "flickr8k-dev").mkdir(parents=True)
    _gallery_pairs(gallery, tmp_path / "data" / "flickr8k-dev" / "pairs.jsonl", long_first=True)
    module.SHARED_DATA = tmp_path / "data"  # (no coco-mini-train there: Flickr8k's stand-in alone)
    assert module.main(["--modes", "none", "--epochs", "1", "--views", "1"]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert line["hard_negatives"] == "none" and line["held_out_images"] >= 1 and 0.0 <= line["rsum"] <= 6.0
    assert not list(scratch_tmp.glob("hard-negatives-*"))


def test_index_runtime_on_a_folder_without_photos_says_so_in_one_line(lite, tmp_path, monkeypatch, capsys):
    """It ended in a PolymodalError traceback from index.update (the folder check only asks that it exists)."""
    import polymodal

    monkeypatch.setattr(polymodal, "load", lambda name, runtime="torch": lite)  # both runtimes: no export needed
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(sys, "argv", ["index_runtime.py", "--images", str(tmp_path / "empty")])
    assert benchmark_module("index_runtime", "s50").main() == 2
    err = capsys.readouterr().err
    assert "no images found under" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_caption_speed_with_a_folder_that_is_no_captioner_export_says_so(tmp_path, capsys):
    """--onnx with a wrong folder ended in a PolymodalError traceback from polymodal.load."""
    module = benchmark_module("caption_speed", "s50")
    (tmp_path / "empty").mkdir()
    assert module.main(["--onnx", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not an ONNX export" in err and "Traceback" not in err


def _gallery_pairs(gallery, path, long_first: bool = False):
    """The sample photos' pairs; ``long_first``: each photo's first caption long enough for every word-order
    scramble (hard_negatives.py scores its held-out photos' first captions)."""
    from polymodal.data.samples import sample_photos

    rows = [{"image": str(next(gallery.glob(f"{name}.*"))), "caption": caption}
            for name, (_, description) in sample_photos().items()
            for caption in ([f"{description} beside a small red box on an old wooden table"] if long_first else [])
            + [description, f"a photo of the {name}"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
