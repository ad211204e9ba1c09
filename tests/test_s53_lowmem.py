"""Memory on a small machine (helper lowmem, stop 53): the ONNX export's calibration feeds one row at a time and
holds one variant's session at a time; a feature cache is written to its file without copies in memory."""

from __future__ import annotations

import gc
import shutil
import tracemalloc
import weakref

import numpy as np
import pytest

from polymodal.export import variants as V


def _count_sessions_at_each_variant(monkeypatch, session_class, name_of) -> list:
    """Each int8 variant becomes a copy of its fp32 graph (the sessions are the point, not int8); -> the list the
    export fills with (name_of(fp32, out), instances of session_class alive) at each variant's build."""
    live, built = weakref.WeakSet(), []
    start = session_class.__init__

    def tracked(self, *args, **kwargs):
        start(self, *args, **kwargs)
        live.add(self)

    def variant(fp32, out, calibration=None):
        gc.collect()
        built.append((name_of(fp32, out), len(live)))
        shutil.copy(fp32, out)
        return out

    monkeypatch.setattr(session_class, "__init__", tracked)
    monkeypatch.setattr(V, "int8_dynamic", variant)
    monkeypatch.setattr(V, "int8_static", variant)
    return built


def test_static_calibration_feeds_one_row_at_a_time_with_the_same_values():
    # the calibrator's session grows with the batch (lite's image graph: 1.4 GB at 8 photos, 0.4 GB at 1)
    pixels = np.arange(8 * 3 * 2 * 2, dtype=np.float32).reshape(8, 3, 2, 2)
    ids = np.arange(6 * 5).reshape(6, 5)
    reader = V._Feeds([{"pixels": pixels[:5]}, {"pixels": pixels[5:]},
                       {"input_ids": ids, "attention_mask": ids > 3}])
    got = list(iter(reader.get_next, None))
    assert [len(next(iter(f.values()))) for f in got] == [1] * 14
    np.testing.assert_array_equal(np.concatenate([f["pixels"] for f in got[:8]]), pixels)
    np.testing.assert_array_equal(np.concatenate([f["attention_mask"] for f in got[8:]]), ids > 3)  # padding kept


def test_a_feed_without_one_batch_axis_is_passed_whole():
    feed = {"pixels": np.zeros((2, 3)), "scale": np.float32(1.0)}
    assert list(iter(V._Feeds([feed]).get_next, None)) == [feed]


def test_export_holds_one_session_per_tower_while_a_variant_is_built(tmp_path, monkeypatch, young_heap):
    """A variant's session (the int8 dynamic image graph's: 0.7 GB after batches of 32) was kept while the next
    variant was quantized, and the last image one while the text tower was: the export peaked at 2.9 GB."""
    pytest.importorskip("onnxruntime")
    from conftest import skip_unless_clip_exports
    from test_onnx import _few_photos
    from test_clip_checkpoints import make_tiny_clip

    import polymodal.export.onnx_export as onnx_export
    from polymodal.models.clip import load_clip

    skip_unless_clip_exports()
    model = load_clip(make_tiny_clip(tmp_path / "tiny-clip"))
    built = _count_sessions_at_each_variant(monkeypatch, onnx_export._Session, lambda fp32, out: fp32.name)
    monkeypatch.setattr(onnx_export, "paired_speed", lambda *a, **k: (100.0, 100.0))  # not faster: rejected
    onnx_export.export_onnx(model, tmp_path / "out", _few_photos(), variants=["int8_dynamic", "int8_static"],
                            timing_seconds=0.02)
    assert built == [("image.fp32.onnx", 1), ("image.fp32.onnx", 1), ("text.fp32.onnx", 1), ("text.fp32.onnx", 1)]


def test_a_feature_cache_is_written_without_copies_in_memory(tmp_path, monkeypatch):
    # np.save into a BytesIO, then getvalue(): two more copies of the array (a 12 GB grid cache -> 36 GB)
    from polymodal import cache

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    features = np.ones((64, 49, 1280), np.float16)  # 8 MB of grid features
    path = tmp_path / "cache" / "features" / "image-x.npy"
    path.parent.mkdir(parents=True)
    tracemalloc.start()
    try:
        stored = cache.store_cached(path, features)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < features.nbytes / 4, f"storing {features.nbytes} bytes allocated {peak} more"
    assert isinstance(stored, np.memmap) and np.array_equal(stored, features)



# the VQA export's twin, test_export_audit.test_vqa_export_holds_no_earlier_variants_sessions_while_a_variant_is_built,
# counts in that module's export with copying variants (one export fewer)

TORCH_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
             "allocate 38535168 bytes. Error code 12 (Cannot allocate memory)")


def _photos(folder, n=4):
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (40, 30), (60 * i, 90, 30)).save(folder / f"p{i}.png")
    return folder


def test_running_out_of_memory_is_one_line_saying_what_was_kept(tmp_path, monkeypatch, capsys):
    """Under a memory limit (prlimit --as, a small container) `index` ended with PyTorch's allocator traceback."""
    from polymodal import cli
    from polymodal.index import store

    photos = _photos(tmp_path / "photos")

    def out_of_memory(model, paths):
        raise RuntimeError(TORCH_OOM)

    monkeypatch.setattr(store, "_embed", out_of_memory)
    db = tmp_path / "pics.idx"
    assert cli.main(["index", str(photos), "--db", str(db), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("polymodal: error: out of memory (an allocation of 36.8 MB failed): 0 of 4 images to "
                          f"embed were saved to {db}; run the same command again to finish; "), err
    assert "--batch-size" in err


def test_out_of_memory_keeps_its_traceback_under_verbose_and_other_errors_are_untouched(tmp_path, monkeypatch):
    from polymodal import cli
    from polymodal.errors import out_of_memory
    from polymodal.index import store

    photos = _photos(tmp_path / "photos", 1)
    monkeypatch.setattr(store, "_embed", lambda model, paths: (_ for _ in ()).throw(RuntimeError(TORCH_OOM)))
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        cli.main(["-v", "index", str(photos), "--db", str(tmp_path / "pics.idx")])
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(ValueError("array is too big")) is None
    assert out_of_memory(MemoryError()) == "MemoryError"
    assert out_of_memory(OSError(12, "Cannot allocate memory")) == "[Errno 12] Cannot allocate memory"  # a fork
    assert out_of_memory(RuntimeError("unable to mmap 90868376 bytes from file <x>: Cannot allocate memory (12)")) \
        == "an allocation of 86.7 MB failed"


def test_hard_negatives_are_mined_a_block_of_rows_at_a_time(monkeypatch):
    """A whole [Q, K] matrix mined at once took ~10x its float32 size (4,000 x 20,000: 3.1 GB for 305 MB)."""
    from polymodal.data.pairs import Pair, PairSet
    from polymodal.train import hard_negatives
    from polymodal.train.pretrain import mine_pairs

    rng = np.random.default_rng(0)
    image_emb, caption_emb = (rng.standard_normal((600, 8)).astype(np.float32) for _ in range(2))
    pairs = PairSet.from_pairs(Pair(f"{i}.jpg", f"caption {i}") for i in range(600))  # one caption each: the diagonal
    sim = image_emb @ caption_emb.T
    np.fill_diagonal(sim, -np.inf)
    whole = np.argsort(-sim, axis=1, kind="stable")[:, :5], np.argsort(-sim.T, axis=1, kind="stable")[:, :5]
    rows = []
    row_tops = hard_negatives._row_tops
    monkeypatch.setattr(hard_negatives, "_row_tops", lambda block, k: rows.append(len(block)) or row_tops(block, k))
    for got, want in zip(mine_pairs(image_emb, caption_emb, pairs, 5), whole):
        np.testing.assert_array_equal(got, want)
    assert max(rows) <= 256 and sum(rows) == 600


def test_the_peak_memory_benchmark_without_its_data_says_so_in_one_line(tmp_path, capsys):
    from conftest import benchmark_module

    assert benchmark_module("peak_memory", "s53").main(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    need = tmp_path / "flickr8k-dev" / "pairs.jsonl"
    assert err == f"error: this benchmark needs {need} (see ../shared/data/README.md)\n"
    assert benchmark_module("peak_memory", "s53").main(["--only", "index,swap"]) == 2
    assert "unknown commands ['swap']" in capsys.readouterr().err
