"""Audit of the training internals: GradCache, run guards, the feature cache, metrics, plots, objectives, heads,
ConSE and the contrastive loss. Every test runs on tiny synthetic tensors or modules built here (no tower weights,
no network), and each pins down a behaviour whose loss a user would notice: wrong gradients or losses, stale
cached features, a guard that lets a bad run start, or a curve drawn from the wrong column."""

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from polymodal.data.augment import Augment
from polymodal.errors import PolymodalError
from polymodal.losses import contrastive_loss
from polymodal.train.gradcache import gradcache_backward

# -- GradCache -------------------------------------------------------------------------------------------------------


def _towers():
    torch.manual_seed(0)
    image, text = nn.Linear(6, 4).double(), nn.Linear(5, 4).double()
    return image, text


def test_gradcache_refuses_a_dict_whose_entries_disagree_on_batch_size():
    image, text = _towers()
    with pytest.raises(PolymodalError, match="different batch sizes"):
        gradcache_backward(image, lambda b: text(b["x"]), torch.randn(4, 6).double(),
                           {"x": torch.randn(4, 5).double(), "mask": torch.ones(3, 5)},
                           lambda i, t: contrastive_loss(i, t, 10.0).loss, chunk_size=2)


def test_gradcache_refuses_an_empty_batch_and_a_non_scalar_loss():
    image, text = _towers()
    with pytest.raises(PolymodalError, match="empty"):
        gradcache_backward(image, text, torch.randn(0, 6).double(), torch.randn(0, 5).double(),
                           lambda i, t: contrastive_loss(i, t, 10.0).loss, chunk_size=2)
    with pytest.raises(PolymodalError, match="scalar"):
        gradcache_backward(image, text, torch.randn(4, 6).double(), torch.randn(4, 5).double(),
                           lambda i, t: (i * t).sum(-1), chunk_size=2)


def test_gradcache_one_sided_loss_skips_the_other_replay_and_keeps_exact_grads():
    image, text = _towers()
    x, t = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    target = torch.randn(5, 4, dtype=torch.float64)

    def loss_fn(i, _):
        return ((i - target) ** 2).sum()

    loss_fn(image(x), None).backward()
    ref = image.weight.grad.clone()
    image.zero_grad()
    text_calls = []
    loss, _, _ = gradcache_backward(image, lambda c: text_calls.append(len(c)) or text(c), x, t, loss_fn, 2)
    torch.testing.assert_close(image.weight.grad, ref)
    assert text.weight.grad is None and text_calls == [2, 2, 1]  # embedded once per chunk, never replayed
    assert not loss.requires_grad


# -- guards ----------------------------------------------------------------------------------------------------------


def test_range_rules_refuse_edges_and_nan():
    from polymodal.train.guards import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, check_ranges

    cases = [(FRACTION, [0.0, 0.5], [1.0, -0.1, math.nan]), (POSITIVE, [1e-9], [0.0, -1.0, math.nan]),
             (NON_NEGATIVE, [0, 0.0], [-1, math.nan]), (AT_LEAST_1, [1], [0, math.nan])]
    for rule, good, bad in cases:
        for value in good:
            check_ranges(SimpleNamespace(val_fraction=value), {"val_fraction": rule})
        for value in bad:
            with pytest.raises(PolymodalError, match="--val-fraction"):
                check_ranges(SimpleNamespace(val_fraction=value), {"val_fraction": rule})


def test_type_checks_refuse_bools_as_numbers_and_recurse_into_nested_settings():
    import dataclasses

    from polymodal.train.guards import check_types

    @dataclasses.dataclass
    class Inner:
        lr: float = 1e-3

    @dataclasses.dataclass
    class Outer:
        epochs: int = 1
        name: str = "run"
        inner: Inner = dataclasses.field(default_factory=Inner)

    check_types(Outer(epochs=np.int64(3), inner=Inner(lr=np.float32(0.1))))
    for bad in (Outer(epochs=True), Outer(epochs=2.0), Outer(name=3), Outer(inner=Inner(lr="0.1")),
                Outer(inner=Inner(lr=False))):
        with pytest.raises(PolymodalError, match="setting"):
            check_types(bad)


def test_run_folder_guard_fires_for_every_run_file_but_not_for_a_plot(tmp_path):
    from polymodal.train.guards import RUN_FILES, check_run_folder

    check_run_folder(tmp_path / "new", resume=False, overwrite=False)
    (tmp_path / "plot_only").mkdir()
    (tmp_path / "plot_only" / "curves.png").write_bytes(b"png")
    check_run_folder(tmp_path / "plot_only", resume=False, overwrite=False)
    for name in RUN_FILES[:-1]:
        run = tmp_path / name.replace(".", "_")
        run.mkdir()
        (run / name).write_text("{}")
        with pytest.raises(PolymodalError, match="already holds a training run"):
            check_run_folder(run, resume=False, overwrite=False)
        check_run_folder(run, resume=False, overwrite=True)
    with pytest.raises(PolymodalError, match="no checkpoint"):
        check_run_folder(tmp_path / "plot_only", resume=True, overwrite=False)
    (tmp_path / "plot_only" / "checkpoint.pt").mkdir()  # a folder named like the checkpoint is no checkpoint
    with pytest.raises(PolymodalError, match="no checkpoint"):
        check_run_folder(tmp_path / "plot_only", resume=True, overwrite=False)
    with pytest.raises(PolymodalError, match="not both"):
        check_run_folder(tmp_path / "new", resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PolymodalError, match="is a file"):
        check_run_folder(tmp_path / "file", resume=False, overwrite=True)


def test_overwrite_removes_every_old_run_file_and_nothing_else(tmp_path):
    from polymodal.train.guards import forget_replaced_run, prepare_run_folder

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.bin").write_bytes(b"w")
    (run / "tensorboard").mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl", "train_config.json", "curves.png", "notes.txt"):
        (run / name).write_text("old")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (run / "tensorboard").rmdir()
    (run / "tensorboard").symlink_to(elsewhere, target_is_directory=True)
    prepare_run_folder(run, overwrite=False)
    assert (run / "metrics.jsonl").read_text() == "old"
    prepare_run_folder(run, overwrite=True)  # moved aside until the new run saves an epoch
    assert sorted(p.name for p in run.iterdir()) == [".replaced-run", "notes.txt"]
    forget_replaced_run(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (elsewhere / "keep.txt").read_text() == "keep"  # a symlinked folder is unlinked, not emptied


def test_a_replacement_killed_before_its_first_epoch_keeps_the_run_it_was_to_replace(tmp_path):
    from polymodal.train.guards import discard_unfinished_run, prepare_run_folder

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.bin").write_bytes(b"old")
    (run / "checkpoint.pt").write_bytes(b"old")
    prepare_run_folder(run, overwrite=True)
    (run / "metrics.jsonl").write_text("new, unfinished")  # then killed (no exception handler ran)
    prepare_run_folder(run, overwrite=True)  # replacing again: the stash is still the run to replace
    assert sorted(p.name for p in run.iterdir()) == [".replaced-run"]
    assert discard_unfinished_run(run) is True  # this run fails too: the old one comes back
    assert (run / "model" / "weights.bin").read_bytes() == b"old" and (run / "checkpoint.pt").read_bytes() == b"old"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "model"]
    assert discard_unfinished_run(run) is False  # nothing to put back


# -- feature cache ---------------------------------------------------------------------------------------------------


class FakeImageModel:
    """Stands in for a DualEncoder's frozen image path: features are the resized pixels themselves."""

    def __init__(self, signature="fake|v1"):
        self.image_cache_signature, self.calls = signature, 0

    @staticmethod
    def transform(pils):
        return np.stack([np.asarray(p.convert("RGB").resize((4, 4)), dtype=np.float32) / 255 for p in pils])

    def image_cache_input(self, pixels):
        self.calls += 1
        return pixels.reshape(len(pixels), -1)


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.bmp"  # BMP: a rewritten image keeps its byte size
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_image_cache_key_covers_everything_that_changes_the_features(images):
    from polymodal.train.features import image_features

    model = FakeImageModel()
    base = np.array(image_features(model, images, views=2, seed=0, progress=False))
    calls = model.calls
    np.testing.assert_array_equal(image_features(model, images, views=2, seed=0, progress=False), base)
    assert model.calls == calls  # a hit
    variants = [dict(views=3, seed=0), dict(views=2, seed=1), dict(views=2, seed=0, augment=Augment(flip=False)),
                dict(views=2, seed=0, model=FakeImageModel("fake|v2"))]
    for kw in variants:
        m = kw.pop("model", model)
        before = m.calls
        out = image_features(m, images, progress=False, **kw)
        assert m.calls > before, f"stale features reused for {kw}"
        assert out.shape[0] == kw["views"]


def test_image_cache_sees_an_image_rewritten_in_place(images):
    from polymodal.train.features import image_features

    model = FakeImageModel()
    first = np.array(image_features(model, images, progress=False))
    size, mtime = images[1].stat().st_size, images[1].stat().st_mtime_ns
    Image.new("RGB", (16, 16), (255, 0, 0)).save(images[1])
    os.utime(images[1], ns=(mtime + 10**9, mtime + 10**9))
    assert images[1].stat().st_size == size
    again = image_features(model, images, progress=False)
    assert not np.allclose(again[0, 1], first[0, 1])
    np.testing.assert_allclose(again[0, 1].reshape(4, 4, 3)[..., 0], 1.0)


def test_view_zero_is_the_plain_image_and_views_do_not_depend_on_batching(images, tmp_path, monkeypatch):
    from polymodal.train.features import image_features

    model = FakeImageModel()
    one = np.array(image_features(model, images, views=2, batch_size=1, progress=False))
    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path / "cache2"))
    three = np.array(image_features(model, images, views=2, batch_size=3, progress=False))
    np.testing.assert_array_equal(one, three)
    plain = model.transform([Image.open(p) for p in images]).reshape(3, -1)
    np.testing.assert_allclose(one[0], plain, atol=1e-3)  # float16 cache
    assert not np.allclose(one[1], plain, atol=1e-3)


def test_text_cache_key_includes_the_tower_signature(tmp_path, monkeypatch):
    from polymodal.train.features import text_features

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))

    def tower(scale):
        return SimpleNamespace(text_cache_signature=f"tower{scale}",
                               text_tower=lambda caps: torch.full((len(caps), 3), float(scale)))

    assert float(text_features(tower(1), ["a cat", "a dog"], progress=False)[0, 0]) == 1.0
    assert float(text_features(tower(2), ["a cat", "a dog"], progress=False)[0, 0]) == 2.0


def test_cached_pairs_draw_one_of_the_images_own_captions_anew_each_epoch():
    from polymodal.train.features import CachedPairDataset, collate_cached

    feats = np.arange(2 * 3 * 2, dtype=np.float16).reshape(2, 3, 2)  # [views, N, F]
    caption_image = np.array([2, 0, 1, 0, 2, 0, 0, 0, 1])
    texts = [f"caption {c} of image {i}" for c, i in enumerate(caption_image)]
    ds = CachedPairDataset(feats, texts, caption_image, seed=0)
    seen = {i: set() for i in range(3)}
    for epoch in range(12):
        ds.set_epoch(epoch)
        for i in range(3):
            image, text = ds[i]
            assert text.endswith(f"of image {i}")
            assert any(torch.equal(image, torch.from_numpy(feats[v, i].astype(np.float32))) for v in range(2))
            seen[i].add(text)
    assert len(seen[0]) > 2  # image 0 has five captions: epochs must not repeat one draw
    ds.set_epoch(3)
    (a_img, a_txt), (b_img, b_txt) = ds[0], ds[0]
    assert a_txt == b_txt and torch.equal(a_img, b_img)  # one epoch, one draw: reproducible
    imgs, txts = collate_cached([ds[0], ds[1]])
    assert imgs.shape == (2, 2) and isinstance(txts, list)


# -- metrics and plot ------------------------------------------------------------------------------------------------


class FakeBoard:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        pass


def test_metrics_append_tag_by_split_and_truncate_after_the_checkpoint_step(tmp_path):
    from polymodal.train.metrics import MetricsLogger, read_metrics

    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger._tb = board = FakeBoard()
    for step in (1, 2, 3):
        logger.write({"step": step, "epoch": 0, "split": "train", "loss": 1.0 / step, "lr": 0.1})
    logger.write({"step": 3, "epoch": 1, "split": "val", "train_loss": 0.5, "val/R@1": 0.25})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 3]
    assert ("train/loss", 0.5, 2) in board.scalars and ("epoch/train_loss", 0.5, 3) in board.scalars
    assert ("val/R@1", 0.25, 3) in board.scalars  # the metric's own name, not val/val/R@1
    assert not any(tag.endswith(("/step", "/epoch", "/split")) for tag, _, _ in board.scalars)
    logger.truncate_after(2)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    logger.write({"step": 3, "epoch": 0, "split": "train", "loss": 0.3, "lr": 0.1})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_plot_draws_each_curve_from_its_own_column(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polymodal.train.plot import plot_run

    records = [{"step": s, "epoch": (s - 1) // 2, "split": "train", "loss": 10.0 - s, "lr": 0.01 * s}
               for s in (1, 2, 3, 4)]
    records.insert(2, {"step": 2, "epoch": 1, "split": "val", "train_loss": 8.5, "val/i2t_R@1": 0.2, "val/loss": 9.0})
    records.append({"step": 4, "epoch": 2, "split": "val", "train_loss": 6.5, "val/i2t_R@1": 0.4, "val/loss": 8.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig) or real_close(fig))
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png" and out.stat().st_size > 0
    loss_ax, lr_ax, recall_ax = figs[-1].axes
    step_line, epoch_line, val_loss = loss_ax.lines
    assert list(step_line.get_xdata()) == [1, 2, 3, 4] and list(step_line.get_ydata()) == [9, 8, 7, 6]
    assert list(epoch_line.get_xdata()) == [2, 4] and list(epoch_line.get_ydata()) == [8.5, 6.5]
    assert list(val_loss.get_xdata()) == [2, 4] and list(val_loss.get_ydata()) == [9.0, 8.0]  # beside the training loss
    assert list(lr_ax.lines[0].get_xdata()) == [1, 2, 3, 4]
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [0.01, 0.02, 0.03, 0.04])
    assert [line.get_label() for line in recall_ax.lines] == ["i2t_R@1"]  # val/loss is no score
    assert list(recall_ax.lines[0].get_xdata()) == [1, 2] and list(recall_ax.lines[0].get_ydata()) == [0.2, 0.4]
    assert recall_ax.lines[0].get_label() == "i2t_R@1"


@pytest.mark.parametrize("metrics", [{"val/accuracy": [0.5, 0.7]}, {"val/cider": [0.1, 0.3], "val/bleu4": [0.05, 0.1]}])
def test_plot_draws_the_validation_metrics_of_vqa_and_captioner_runs(tmp_path, monkeypatch, metrics):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polymodal.train.plot import plot_run

    records = [{"step": 2 * e, "epoch": e, "split": "val", "train_loss": 1.0 / e,
                **{k: v[e - 1] for k, v in metrics.items()}} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig) or real_close(fig))
    plot_run(tmp_path)
    drawn = {line.get_label(): list(line.get_ydata()) for line in figs[-1].axes[2].lines}
    assert drawn == {k[4:]: v for k, v in metrics.items()}
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(PolymodalError, match="has no rows yet"):
        plot_run(tmp_path)


# -- objectives ------------------------------------------------------------------------------------------------------


class TinyDual(nn.Module):
    """The pieces of a DualEncoder that ContrastiveObjective uses, over 6-d image and 5-d text features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image_head, self.text_head = nn.Linear(6, 4), nn.Linear(5, 4)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def image_from_cache(self, x):
        return self.image_head(x)

    def text_from_pooled(self, t):
        return self.text_head(t)

    def _text_batch(self, texts):
        return self.text_head(torch.tensor([[float(len(t))] * 5 for t in texts]))

    @property
    def logit_scale_tensor(self):
        return self.log_logit_scale.exp()


def _dual_batch(n=6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g) * 5, torch.randn(n, 5, generator=g) * 5


def test_contrastive_objective_normalises_both_sides_and_uses_the_model_scale():
    from polymodal.train.objectives import ContrastiveObjective

    model = TinyDual()
    images, texts = _dual_batch()
    loss, metrics = ContrastiveObjective().compute(model, (images, texts))
    ref = contrastive_loss(F.normalize(model.image_head(images), dim=-1), F.normalize(model.text_head(texts), dim=-1),
                           model.logit_scale_tensor)
    torch.testing.assert_close(loss, ref.loss)
    assert metrics == {"acc_i2t": ref.accuracy_i2t, "acc_t2i": ref.accuracy_t2i}
    loss.backward()
    assert model.log_logit_scale.grad is not None and model.log_logit_scale.grad != 0
    # raw strings go through the model's text tower, normalised too
    loss_s, _ = ContrastiveObjective().compute(model, (images[:3], ["a", "bb", "ccc"]))
    ref_s = contrastive_loss(F.normalize(model.image_head(images[:3]), dim=-1),
                             F.normalize(model._text_batch(["a", "bb", "ccc"]), dim=-1), model.logit_scale_tensor)
    torch.testing.assert_close(loss_s, ref_s.loss)


@pytest.mark.parametrize("weight", [1.0, 3.0, 0.0])
def test_gradcache_objective_reports_the_unweighted_loss_like_the_plain_path(weight):
    from polymodal.train.objectives import ContrastiveObjective

    model = TinyDual().double()
    images, texts = (x.double() for x in _dual_batch(7))
    out = []
    for objective in (ContrastiveObjective(), ContrastiveObjective(gradcache_chunk=3)):
        model.zero_grad()
        metrics = objective.backward(model, (images, texts), weight)
        out.append((metrics["loss"], {n: p.grad.clone() for n, p in model.named_parameters()}))
        assert set(metrics) == {"loss", "acc_i2t", "acc_t2i"}  # the same metrics either way
    (plain_loss, plain_grads), (cached_loss, cached_grads) = out
    assert cached_loss == pytest.approx(plain_loss, rel=1e-9)
    assert len(plain_grads) == 5
    for name in plain_grads:
        torch.testing.assert_close(cached_grads[name], plain_grads[name], msg=name)
    model.zero_grad()
    ContrastiveObjective().backward(model, (images, texts), 1.0)
    torch.testing.assert_close(plain_grads["image_head.weight"], weight * model.image_head.weight.grad)
    assert plain_loss == pytest.approx(ContrastiveObjective().compute(model, (images, texts))[0].item(), rel=1e-9)


class FakeVQAModel(nn.Module):
    """vqa_logits/itm_logits as small functions of their inputs; records what the objective passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.answer = nn.Linear(3, 4)
        self.match = nn.Linear(3, 1)
        self.seen = {}

    def vqa_logits(self, images, states, mask, row_image):
        self.seen["vqa"] = (states, mask, row_image)
        return self.answer(images[row_image].mean(1) + (states * mask[..., None]).sum(1))

    def itm_logits(self, images, states, mask, row_image):
        self.seen["itm"] = (states, mask, row_image)
        return self.match(images[row_image].mean(1) + (states * mask[..., None]).sum(1))[:, 0]


def _vqa_batch(itm=True):
    from polymodal.train.vqa_objective import VQABatch

    g = torch.Generator().manual_seed(2)
    extra = {}
    if itm:
        extra = dict(itm_states=torch.randn(6, 4, 3, generator=g), itm_mask=torch.rand(6, 4, generator=g) > 0.3,
                     itm_labels=torch.tensor([1.0, 0, 1, 0, 1, 0]), itm_row_image=torch.tensor([1, 1, 0, 0, 1, 0]))
    return VQABatch(targets=torch.tensor([0, 3, 1]), row_image=torch.tensor([0, 1, 1]),
                    images=torch.randn(2, 5, 3, generator=g), states=torch.randn(3, 4, 3, generator=g),
                    mask=torch.rand(3, 4, generator=g) > 0.3, **extra)


def test_vqa_objective_applies_label_smoothing_and_the_itm_weight():
    from polymodal.train.vqa_objective import VQAObjective

    model, batch = FakeVQAModel(), _vqa_batch()
    loss, metrics = VQAObjective(label_smoothing=0.2, itm_weight=0.5).compute(model, batch)
    with torch.no_grad():
        logits = model.answer(batch.images[batch.row_image].mean(1) + (batch.states * batch.mask[..., None]).sum(1))
        itm = model.match(batch.images[batch.itm_row_image].mean(1)
                          + (batch.itm_states * batch.itm_mask[..., None]).sum(1))[:, 0]
    ce = F.cross_entropy(logits, batch.targets, label_smoothing=0.2)
    bce = F.binary_cross_entropy_with_logits(itm, batch.itm_labels)
    assert float(ce) != pytest.approx(float(F.cross_entropy(logits, batch.targets)), rel=1e-3)
    assert float(loss.detach()) == pytest.approx(float(ce + 0.5 * bce), rel=1e-6)
    assert metrics["vqa_loss"] == pytest.approx(float(ce), rel=1e-6)
    assert metrics["itm_loss"] == pytest.approx(float(bce), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(-1) == batch.targets).float().mean()))
    assert metrics["itm_accuracy"] == pytest.approx(float(((itm > 0).float() == batch.itm_labels).float().mean()))
    states, mask, row_image = model.seen["itm"]
    assert states is batch.itm_states and mask is batch.itm_mask and row_image is batch.itm_row_image


def test_vqa_objective_without_itm_weight_never_runs_the_itm_head():
    from polymodal.train.vqa_objective import VQAObjective, vqa_loss

    model, batch = FakeVQAModel(), _vqa_batch()
    loss, metrics = VQAObjective().compute(model, batch)
    assert "itm" not in model.seen and "itm_loss" not in metrics
    # uniform logits over A answers cost log A whatever the target; smoothing cannot change that
    assert float(vqa_loss(torch.zeros(2, 4), torch.tensor([1, 2]), 0.3)) == pytest.approx(math.log(4))
    # a confident right answer costs more under smoothing (eps spread over the other answers)
    confident = torch.tensor([[10.0, 0, 0, 0]])
    assert float(vqa_loss(confident, torch.tensor([0]), 0.3)) > float(vqa_loss(confident, torch.tensor([0]))) + 0.5


def test_itm_accuracy_thresholds_logits_at_zero():
    from polymodal.train.vqa_objective import VQAObjective

    class Fixed(FakeVQAModel):
        def itm_logits(self, images, states, mask, row_image):
            return torch.tensor([-1.0, 0.3, 2.0, -0.2, 0.1, -3.0])

    batch = _vqa_batch()._replace(itm_labels=torch.tensor([0.0, 1, 1, 0, 1, 0]))
    _, metrics = VQAObjective(itm_weight=1.0).compute(Fixed(), batch)
    assert metrics["itm_accuracy"] == 1.0


class FakeFusion(nn.Module):
    def __init__(self, head="regress"):
        super().__init__()
        self.config = SimpleNamespace(mrm_head=head)
        self.w = nn.Parameter(torch.ones(()))
        self.seen = {}

    def mlm_logits(self, images, states, mask, positions, row_image):
        self.seen["positions"] = positions
        torch.manual_seed(0)
        return self.w * torch.randn(int(positions.sum()), 7)

    def itm_logits(self, images, states, mask, row_image):
        return self.w * torch.tensor([-2.0, 0.4, 0.1, -0.1])

    def mrm_predictions(self, images, states, mask, region_mask, row_image):
        return self.w * torch.ones(int(region_mask.sum()), 3)

    def mrm_targets(self, images, region_mask, row_image):
        return torch.arange(int(region_mask.sum()) * 3, dtype=torch.float32).reshape(-1, 3)


def _pretrain_batch(**kw):
    from polymodal.train.pretrain_objectives import PretrainBatch

    return PretrainBatch(row_image=torch.tensor([0, 0, 1, 1]), images=torch.zeros(2, 4, 3),
                         states=torch.zeros(4, 5, 3), mask=torch.ones(4, 5, dtype=torch.bool), **kw)


def test_mlm_predicts_only_the_masked_positions_and_survives_a_batch_without_any():
    from polymodal.train.pretrain_objectives import IGNORE, MLMObjective

    targets = torch.full((4, 5), IGNORE)
    targets[0, 1], targets[2, 3], targets[3, 0] = 4, 2, 6
    model = FakeFusion()
    loss, metrics = MLMObjective().compute(model, _pretrain_batch(mlm_targets=targets))
    assert torch.equal(model.seen["positions"], targets != IGNORE)
    torch.manual_seed(0)
    logits = torch.randn(3, 7)
    assert loss.item() == pytest.approx(float(F.cross_entropy(logits, torch.tensor([4, 2, 6]))), rel=1e-6)
    right = (logits.argmax(-1) == torch.tensor([4, 2, 6])).float().mean()
    assert metrics["mlm_accuracy"] == pytest.approx(float(right))
    empty = _pretrain_batch(mlm_targets=torch.full((4, 5), IGNORE))
    out = MLMObjective().backward(model, empty, 2.0)  # must not fail: a zero loss that is still in the graph
    assert out["loss"] == 0.0 and out["mlm_loss"] == 0.0


def test_itm_and_mrm_objectives_on_fixed_outputs():
    from polymodal.train.pretrain_objectives import ITMObjective, MRMObjective

    labels = torch.tensor([0.0, 1, 1, 0])
    loss, metrics = ITMObjective().compute(FakeFusion(), _pretrain_batch(itm_labels=labels))
    logits = torch.tensor([-2.0, 0.4, 0.1, -0.1])
    assert loss.item() == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, labels)), rel=1e-6)
    assert metrics["itm_accuracy"] == 1.0
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[0, 1] = region[2, 2] = True
    loss, metrics = MRMObjective().compute(FakeFusion(), _pretrain_batch(region_mask=region))
    # targets [0,1,2] and [3,4,5] standardise to (-1.2247, 0, 1.2247); a prediction of ones is off by that
    z = math.sqrt(1.5)
    assert loss.item() == pytest.approx(((1 + z) ** 2 + 1 + (1 - z) ** 2) / 3, rel=1e-3)
    loss, metrics = MRMObjective().compute(FakeFusion("classify"), _pretrain_batch(region_mask=region))
    # KL(target || prediction) per cell, averaged over the 2 cells: targets softmax([0,1,2]) and softmax([3,4,5])
    # (the same distribution), prediction uniform; a mean over cells x classes or the reverse KL differ
    p = torch.softmax(torch.tensor([0.0, 1, 2]), 0)
    kl = float((p * (p.log() - math.log(1 / 3))).sum())
    assert loss.item() == pytest.approx(kl, rel=1e-5)
    assert metrics["mrm_top1_agreement"] == 0.0  # uniform prediction argmax 0, target argmax 2


# -- heads -----------------------------------------------------------------------------------------------------------


def test_residual_head_starts_at_the_identity_and_learns_a_correction():
    from polymodal.models.heads import build_head

    head = build_head("residual", 8, 8, dropout=0.0)
    x = torch.randn(5, 8)
    torch.testing.assert_close(head(x), x)
    head(x).pow(2).sum().backward()
    assert head.mlp.net[-1].weight.grad.abs().sum() > 0  # the zero-initialised layer still learns
    assert build_head("residual", 8, 6, dropout=0.0)(x).abs().max().item() == 0.0  # no identity across widths


def test_build_head_passes_dropout_and_refuses_unknown_kinds():
    from polymodal.models.heads import build_head

    torch.manual_seed(0)
    x = torch.randn(64, 8)
    for kind in ("mlp", "residual", "conse_residual"):
        head = build_head(kind, 8, 8, dropout=0.0).train()
        torch.testing.assert_close(head(x), head(x))  # dropout 0: training mode is deterministic
        assert all(m.p == 0.5 for m in build_head(kind, 8, 8, dropout=0.5).modules() if isinstance(m, nn.Dropout))
    with pytest.raises(PolymodalError, match="unknown head"):
        build_head("transformer", 8, 8)


def test_attention_pool_head_is_order_free_over_the_grid_at_init():
    from polymodal.models.heads import AttentionPoolHead

    torch.manual_seed(0)
    head = AttentionPoolHead(16, 8, heads=4, grid=9).eval()
    tokens = torch.randn(2, 9, 16)
    out, weights = head(tokens, return_weights=True)
    perm = torch.arange(9).flip(0)  # moves every token, the first one included
    torch.testing.assert_close(head(tokens[:, perm]), out, atol=1e-5, rtol=1e-5)
    assert weights.shape == (2, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_attention_pool_head_starts_from_the_plain_mean():
    """The docstring's promise: 'initialised to the plain mean so training starts from the pooled-feature
    solution'. A random attention output projection adds a random term on top of proj(mean)."""
    from polymodal.models.heads import AttentionPoolHead

    torch.manual_seed(0)
    head = AttentionPoolHead(16, 8, heads=4, grid=9)
    tokens = torch.randn(3, 9, 16)
    torch.testing.assert_close(head(tokens), head.proj(tokens.mean(1)), atol=1e-6, rtol=1e-6)
    head(tokens).pow(2).sum().backward()
    assert head.attn.out_proj.weight.grad.abs().sum() > 0  # and the attention can still learn


# -- ConSE -----------------------------------------------------------------------------------------------------------


def test_conse_embedding_is_the_probability_weighted_mean_of_the_top_k_classes():
    from polymodal.models.conse import conse_embedding

    classes = torch.eye(4)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    torch.testing.assert_close(conse_embedding(logits, classes, top_k=2),
                               torch.tensor([[0.5, 0.3, 0, 0], [0, 0, 0.3, 0.4]]))
    torch.testing.assert_close(conse_embedding(logits, classes, top_k=4), logits.softmax(-1))
    # one image's embedding does not depend on the others in its batch
    torch.testing.assert_close(conse_embedding(logits[:1], classes, top_k=2), conse_embedding(logits, classes, 2)[:1])


def test_class_prompt_matrix_is_normalised_and_recomputed_for_another_width(tmp_path, monkeypatch):
    from polymodal.models import conse

    monkeypatch.setenv("POLYMODAL_CACHE", str(tmp_path))
    monkeypatch.setattr(conse, "imagenet_classes", lambda: ["cat", "dog", "car"])

    class Tower:
        def __init__(self, dim):
            self.dim, self.calls = dim, 0

        def __call__(self, prompts):
            self.calls += 1
            return torch.stack([torch.arange(1.0, self.dim + 1) + len(p) for p in prompts])

    small = conse.class_prompt_matrix(Tower(4))
    assert small.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, rtol=1e-6)
    cached = Tower(4)
    np.testing.assert_array_equal(conse.class_prompt_matrix(cached), small)
    assert cached.calls == 0
    assert conse.class_prompt_matrix(Tower(6)).shape == (3, 6)  # a stale width is recomputed, not returned


# -- contrastive loss ------------------------------------------------------------------------------------------------


def test_contrastive_loss_refuses_an_empty_batch_and_scales_logits_both_ways():
    with pytest.raises(PolymodalError, match="empty"):
        contrastive_loss(torch.zeros(0, 4), torch.zeros(0, 4), 10.0)
    img = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [1.0, 1.0]]), dim=1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 1.0]]), dim=1)
    out = contrastive_loss(img, txt, 5.0)
    sim = 5.0 * img @ txt.T
    ref = (F.cross_entropy(sim, torch.arange(3)) + F.cross_entropy(sim.T, torch.arange(3))) / 2
    torch.testing.assert_close(out.loss, ref)
    # asymmetric on purpose: the t2i direction alone differs from i2t
    assert float(F.cross_entropy(sim, torch.arange(3))) != pytest.approx(float(F.cross_entropy(sim.T, torch.arange(3))))


def test_temperature_clamp_pins_the_parameter_to_its_documented_range():
    from polymodal.losses import LearnableTemperature

    temp = LearnableTemperature()
    for raw, pinned in ((-1.0, 0.0), (0.5, 0.5), (9.0, math.log(100))):
        with torch.no_grad():
            temp.log_scale.fill_(raw)
        temp.clamp_()
        assert temp.log_scale.item() == pytest.approx(pinned)


def test_a_metrics_line_cut_short_is_skipped_by_resume_and_plot(tmp_path, caplog):
    from polymodal.train.metrics import MetricsLogger, read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert "skipped 1 unreadable line" in caplog.text
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.truncate_after(1)  # --resume from the step-1 checkpoint
    logger.write({"step": 2, "loss": 1.4})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 2.0), (2, 1.4)]


def test_cache_keys_keep_texts_with_newlines_apart():
    from polymodal.cache import cache_key

    assert cache_key("sig", "a\nb", "c") != cache_key("sig", "a", "b\nc")
    assert cache_key("sig", 1, "x") == cache_key("sig", "1", "x") and len(cache_key("sig")) == 20
