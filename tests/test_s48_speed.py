"""fp32 inference's folded Lite0 copy pads no input into a new tensor (polymodal.encoders.fused_lite), with the
features of the copy before; text batches cut in order of token counts, across encode_captions' chunks too (helper
review s48/speed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polymodal.data.samples import sample_photos
from polymodal.encoders.efficientnet import LITE0_TRANSFORM, EfficientNetLite0


@pytest.fixture(scope="module")
def net():
    return EfficientNetLite0().net


@pytest.fixture(scope="module")
def pixels():
    return torch.from_numpy(LITE0_TRANSFORM([a for a, _ in list(sample_photos().values())[:3]]))


def test_the_folded_copy_pads_no_input_into_a_new_tensor(net, pixels, monkeypatch):
    from polymodal.encoders.fused_lite import fused_copy

    pads = []
    real_pad = F.pad
    monkeypatch.setattr(F, "pad", lambda *a, **k: pads.append(a[1]) or real_pad(*a, **k))  # ZeroPad2d calls F.pad
    with torch.inference_mode():
        copy = fused_copy(net)
        copy.extract_features(pixels.contiguous(memory_format=torch.channels_last))
    assert pads == []  # the 5 stride-2 layers each padded their input into a new tensor
    assert not any(isinstance(m, torch.nn.ZeroPad2d) for m in copy.modules())
    assert sorted(m.kernel_size for m in copy.modules() if isinstance(m, torch.nn.Conv2d) and m.stride[0] == 2) == [
        (4, 4), (4, 4), (4, 4), (6, 6), (6, 6)]  # the stem and 2 depthwise 3x3, 2 depthwise 5x5, one wider


@pytest.mark.parametrize("shape", [(1, 3, 224, 224), (2, 3, 225, 231), (1, 3, 160, 96)])
def test_the_rewritten_copy_computes_the_features_of_the_copy_before_it(net, shape):
    """Any input size (odd ones too: the widened kernel reads the same inputs), batch 1, and a tensor that is not
    channels-last; and the eager module's features, as the folded copy always matched them."""
    from polymodal.encoders.fused_lite import fused_copy

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        new = fused_copy(net).extract_features(x)  # contiguous (NCHW), as a caller may pass it
        old = fused_copy(net, rewrite=False).extract_features(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        eager = net.extract_features(x)
    assert new.shape == old.shape == eager.shape
    np.testing.assert_allclose(new.numpy(), old.numpy(), atol=1e-5, rtol=0)  # equal here; other CPUs: rounding
    np.testing.assert_allclose(new.numpy(), eager.numpy(), atol=2e-4, rtol=0)


def test_the_tower_on_photos_gives_the_old_copys_features_and_classes(pixels):
    from polymodal.encoders.fused_lite import fused_copy

    tower = EfficientNetLite0()
    with torch.inference_mode():
        now = tower.spatial(pixels)  # through _inference_net: the rewritten copy
        before = fused_copy(tower.net, rewrite=False).extract_features(
            pixels.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(now.numpy(), before.numpy(), atol=1e-5, rtol=0)
    assert torch.equal(tower.net._fc(now.mean((2, 3))).argmax(1), tower.net._fc(before.mean((2, 3))).argmax(1))


def test_the_benchmark_compares_both_copies_in_one_run(capsys, tmp_path):
    # --heap glibc: the CLI's heap setting would stay on in this test process
    (tower,) = _run_benchmark("fused_tower_rewrites", ["--repeats", "1", "--batch", "2", "--heap", "glibc",
                                                      "--commands", "none"], capsys)
    assert tower["part"] == "tower" and tower["old/new"]["median"] > 0 and tower["max_abs_feature_diff"] < 1e-5


# -- text batches cut in order of token counts ---------------------------------------------------------------------
# Characters and word pieces disagree: by characters these come in the token counts 3, 6, 15, 14, 10, 11.
MIXED = ["dog", "hippopotamus", "x, y; z. a! b? c: d", "a a a a a a a a a a a a", "antidisestablishmentarianism",
         "the cat sat on the mat with a hat"]


def _spy(monkeypatch, model, name):
    """Records the token counts of the texts each call of model.NAME gets."""
    calls, real = [], getattr(model, name)

    def spy(texts, *args, **kwargs):
        calls.append(model.text_lengths(list(texts)))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(model, name, spy)
    return calls


def test_encode_text_cuts_its_batches_in_order_of_token_counts(lite, monkeypatch):
    texts = [t for t in MIXED for _ in range(5)]
    assert lite.text_lengths(MIXED) == [3, 6, 15, 14, 10, 11]
    calls = _spy(monkeypatch, lite, "embed_texts")
    got = lite.encode_text(texts, batch_size=5)
    seen = [n for batch in calls for n in batch]
    assert seen == sorted(seen) and all(len(set(batch)) == 1 for batch in calls)  # each batch padded by nothing
    monkeypatch.undo()
    alone = np.concatenate([lite.encode_text([t]) for t in MIXED])
    np.testing.assert_allclose(got[::5], alone, atol=1e-6, rtol=0)  # the vectors of each text alone


def test_encode_captions_orders_the_captions_across_its_chunks(lite, monkeypatch):
    from polymodal.eval.retrieval import encode_captions

    texts = [MIXED[i % 6] + (" ." * (i % 2)) for i in range(48)]  # in caption order every chunk spans all lengths
    calls = _spy(monkeypatch, lite, "encode_text")
    got = encode_captions(lite, texts, chunk=12)
    seen = [n for chunk in calls for n in chunk]
    assert [len(c) for c in calls] == [12] * 4 and seen == sorted(seen)
    monkeypatch.undo()
    np.testing.assert_allclose(got, lite.encode_text(texts), atol=1e-6, rtol=0)  # rows back in the captions' order


def test_encode_captions_keeps_the_order_for_batch_dependent_vectors():
    """An int8 text graph scales each batch by its own range: its captions stay in their order."""
    from polymodal.eval.retrieval import encode_captions

    class Int8Like:
        texts_batch_independent = False
        calls = []

        def text_lengths(self, texts):
            raise AssertionError("not asked: the order is kept")

        def encode_text(self, texts):
            self.calls.append(list(texts))
            return np.array([[float(len(t))] for t in texts], np.float32)

    model, texts = Int8Like(), [MIXED[i % 6] for i in range(10)]
    np.testing.assert_array_equal(encode_captions(model, texts, chunk=4)[:, 0], [len(t) for t in texts])
    assert model.calls == [texts[0:4], texts[4:8], texts[8:10]]


def test_a_text_the_tokenizer_refuses_is_still_one_error(lite):
    from polymodal.errors import PolymodalError

    assert lite.text_tower._fast.counts(["fine", "bad \ud800"]) is None  # counting leaves the error to encoding
    with pytest.raises(PolymodalError):
        lite.encode_text(["fine"] * 70 + ["bad \ud800"])


def test_the_text_benchmark_compares_both_orders_in_one_run(capsys, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": "x.jpg", "caption": MIXED[i % 6] + " ." * (i % 3)}) + "\n"
                             for i in range(40)))
    (texts,) = _run_benchmark("text_token_order", ["--pairs", pairs, "--repeats", "1", "--captions", "40",
                                                  "--commands", "none"], capsys)
    assert texts["captions"] == 40 and texts["max_abs_vector_diff"] < 1e-5
    assert texts["new_tokens_per_real_token"] <= texts["old_tokens_per_real_token"]


def _run_benchmark(name: str, argv: list, capsys) -> list[dict]:
    """test_benchmarks_run's run_benchmark, leaving this process's torch threads as they were (scripts set theirs)."""
    from test_benchmarks_run import run_benchmark

    threads = torch.get_num_threads()
    try:
        return run_benchmark(name, argv, capsys)
    finally:
        torch.set_num_threads(threads)
