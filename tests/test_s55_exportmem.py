"""Memory of `export onnx` (helper exportmem, stop 55): a tower's fp32 session gives its run-time memory (onnxruntime's
arena, 0.4 GB for EfficientNet-Lite0 at batch 32) back before a variant is built and checked, and the paired timing
gives each session's back after its turn, so no two sessions hold theirs at once (the export peaked at the fp32
arena plus the variant's); the decoded photos are not kept beside their stacked copy."""

from __future__ import annotations

import weakref

import numpy as np
import pytest


def test_paired_speed_releases_each_side_after_its_timing_and_warms_it_again(monkeypatch):
    from polymodal.export import onnx_export

    now, calls = [0.0], []
    monkeypatch.setattr(onnx_export.time, "perf_counter", lambda: now[0])

    def graph(name: str, seconds: float):
        def run():
            calls.append(name)
            now[0] += seconds
        return run

    speed, base = onnx_export.paired_speed(graph("variant", 0.25), graph("base", 0.25), 10, seconds=0.5,
                                           release=(lambda: calls.append("free variant"),
                                                    lambda: calls.append("free base")))
    turn = ["variant"] * 3 + ["free variant"] + ["base"] * 3 + ["free base"]  # a warm-up call, then 2 timed
    assert calls == turn * 3
    assert speed == base == 40.0


def test_paired_speed_without_release_times_as_before(monkeypatch):
    from polymodal.export import onnx_export

    now, calls = [0.0], []
    monkeypatch.setattr(onnx_export.time, "perf_counter", lambda: now[0])

    def graph(name: str):
        def run():
            calls.append(name)
            now[0] += 0.25
        return run

    onnx_export.paired_speed(graph("variant"), graph("base"), 10, seconds=0.5)
    assert calls == ["variant", "base"] + (["variant"] * 2 + ["base"] * 2) * 3


def test_no_two_sessions_hold_their_run_memory_at_once(tmp_path, monkeypatch):
    """Every batch a session runs finds each other session of the export released (its last run shrank its arena)."""
    pytest.importorskip("onnxruntime")
    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip
    from test_onnx import _few_photos

    import polymodal.export.onnx_export as onnx_export
    from polymodal.models.clip import load_clip

    skip_unless_clip_exports()
    model = load_clip(make_tiny_clip(tmp_path / "tiny-clip"))
    holding, overlaps, runs = weakref.WeakSet(), [], []
    real_run = onnx_export._Session.run

    def run(self, batch, options=None):
        out = real_run(self, batch, options) if options is not None else real_run(self, batch)
        runs.append(self.tower)
        if options is None:  # an ordinary run: the session now keeps its arena
            overlaps.extend((self.tower, other.tower) for other in holding if other is not self)
            holding.add(self)
        else:  # the arena shrank after this run
            holding.discard(self)
        return out

    monkeypatch.setattr(onnx_export._Session, "run", run)
    report = onnx_export.export_onnx(model, tmp_path / "out", _few_photos(), variants=["int8_dynamic", "int8_static"],
                                     timing_seconds=0.02)
    tried = [(r["tower"], r["variant"]) for r in report["tries"] if r["status"] != "failed"]
    assert len(tried) > 2 and set(runs) == {"image", "text"}, report["tries"]  # variants were timed
    assert overlaps == []


def test_the_decoded_photos_are_not_kept_beside_the_pixels(tmp_path, monkeypatch, young_heap):
    """The photos' decoded batches were kept for the whole export beside the stacked pixels (180 MB at 300)."""
    pytest.importorskip("onnxruntime")
    import gc

    from conftest import skip_unless_clip_exports
    from test_clip_checkpoints import make_tiny_clip
    from test_onnx import _few_photos

    import polymodal.export.onnx_export as onnx_export
    from polymodal.models.clip import load_clip

    skip_unless_clip_exports()
    model = load_clip(make_tiny_clip(tmp_path / "tiny-clip"))
    decoded, alive = [], []
    transform = model.transform

    class Tracked(np.ndarray):  # a plain ndarray cannot be weakly referenced
        pass

    class Transform:  # the model's, its decoded photos tracked
        def __call__(self, batch):
            out = [np.asarray(a).view(Tracked) for a in transform(batch)]
            decoded.extend(weakref.ref(a) for a in out)
            return out

        def __getattr__(self, name):
            return getattr(transform, name)

    monkeypatch.setattr(model, "transform", Transform())

    class Stop(BaseException):  # ends the export where the check is done (the variants do not matter here)
        pass

    def first_graph(*args, **kwargs):  # the image graph's trace: is any decoded photo still alive?
        gc.collect()
        alive.append(sum(ref() is not None for ref in decoded))
        raise Stop

    monkeypatch.setattr(onnx_export, "export_graph", first_graph)
    with pytest.raises(Stop):
        onnx_export.export_onnx(model, tmp_path / "out", _few_photos(), variants=[], timing_seconds=0.02)
    assert decoded and alive == [0], alive


def test_vqa_variants_are_built_and_timed_with_the_fp32_graphs_released(tmp_path, monkeypatch):
    """The VQA export's fp32 graphs kept their arenas (batch 32) while each variant was quantized and checked, and
    paired_speed released neither side: the export peaked at 2.0 GB for easy-vqa."""
    from types import SimpleNamespace

    from polymodal.export import fusion_export, fusion_runtime, onnx_export
    from polymodal.export import variants as V

    events = []
    rows = [SimpleNamespace(image=f"img{i}", question=f"q{i}", answer="a", answer_type="other") for i in range(4)]

    class Trial:
        def __init__(self, out):
            self.grid = SimpleNamespace(run=lambda *a: None)

        def predict(self, images, questions):
            return [("a", 0.9) for _ in questions]

        def release_memory(self, image, question):
            events.append("release variant")

    def paired(run, base, items, seconds, release=None):
        for let_go in release or ():
            let_go()
        return 20.0, 10.0

    monkeypatch.setattr(fusion_runtime, "OnnxFusionEncoder", Trial)
    monkeypatch.setattr(V, "int8_dynamic", lambda fp32, path, calibration=None: events.append("build") or
                        path.write_bytes(b"x"))
    monkeypatch.setattr(onnx_export, "paired_speed", paired)
    monkeypatch.setattr("polymodal.eval.vqa.accuracy_by_type", lambda said, rows: {"accuracy": 1.0})
    fp32 = SimpleNamespace(transform=lambda images: np.zeros((len(images), 3, 4, 4), np.float32),
                           tokenizer=lambda questions: {"input_ids": np.zeros((len(questions), 3), np.int64)},
                           grid=SimpleNamespace(run=lambda *a: None),
                           release_memory=lambda image, question: events.append(f"release fp32 {image}"))
    fusion_export._try_variants(tmp_path, {"files": {"grid": "grid.onnx"}}, fp32, rows, 1.0,
                                {"grid": ("int8_dynamic",)}, 1.0, 0.01, lambda m: None)
    assert events == ["release fp32 img0", "build", "release variant", "release fp32 img0"]


def test_the_captioner_int8_step_is_built_and_timed_with_the_fp32_graphs_released(tmp_path, monkeypatch):
    from polymodal.export import caption_export, caption_runtime, onnx_export

    events = []

    class Onnx:
        def __init__(self, folder=None, threads=None):
            self.name = "variant" if folder is not None else "fp32"

        def caption(self, images, beam=3):
            return ["a dog"] * len(images)

        def release_memory(self, image):
            events.append(f"release {self.name} {image}")

    def paired(run, base, items, seconds, release=None):
        for let_go in release or ():
            let_go()
        return 10.0, 10.0

    monkeypatch.setattr(caption_runtime, "OnnxCaptioner", Onnx)
    monkeypatch.setattr(caption_export.V, "int8_dynamic", lambda fp32, out, calibration=None: events.append("build")
                        or out.write_bytes(b"q"))
    monkeypatch.setattr(onnx_export, "paired_speed", paired)
    monkeypatch.setattr("polymodal.eval.captions.caption_scores", lambda refs, said: {"cider": 1.0})
    photos = [f"p{i}" for i in range(caption_export.MIN_GATE_PHOTOS)]
    row = caption_export._try_int8(tmp_path, {"files": {}}, Onnx(), photos, [["a dog"]] * len(photos),
                                   ["a dog"] * len(photos), 3, 1.0, 0.01, lambda m: None)
    assert row["status"] == "rejected", row
    assert events == ["release fp32 p0", "build", "release variant p0", "release fp32 p0"]
