"""What a mutation audit of the data readers (pairs, shards, JSONL, sample gallery, augmentation, image loading) and
the training core (Trainer, guards, GradCache, feature cache) showed slipping through the other tests. Each test was
checked to fail on its mutation and pins down a behaviour a user relies on; all use tiny synthetic inputs."""

from __future__ import annotations

import json
import random
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polymodal.data.augment import Augment, make_rng
from polymodal.data.images import ImageTransform, load_image
from polymodal.data.jsonl import iter_json_rows
from polymodal.data.pairs import Pair, PairSet, open_pair_image, read_pair_source, split_by_image
from polymodal.data.shards import (
    expand_braces, expand_shards, iter_samples, write_shards,
)
from polymodal.errors import PolymodalError
from polymodal.train.features import CachedPairDataset, image_features
from polymodal.train.gradcache import gradcache_backward
from polymodal.train.guards import check_types, prepare_run_folder
from polymodal.train.metrics import read_metrics
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer
from test_eval_data_audit import _add, _png_bytes, png
from test_image_inputs import png_bytes
from test_pairs import TRANSFORM, _write_image
import test_train_internals_audit
from test_train_internals_audit import FakeImageModel
from test_trainer_loop import _scripted
from test_trainer_loop import _trainer as loop_trainer

images = test_train_internals_audit.images  # the fixture: three BMP images and a cache folder in tmp_path

# ---------------------------------------------------------------------------------------------- JSONL


def test_json_scalars_and_strings_are_not_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n42\n"just text"\nnull\n')
    rows = [(w.rsplit(":", 1)[1], r, why) for w, r, why in iter_json_rows(path, "fix it")]
    assert rows == [("1", {"a": 1}, ""), ("2", None, "not a JSON object"), ("3", None, "not a JSON object"),
                    ("4", None, "not a JSON object")]


# ---------------------------------------------------------------------------------------------- sample gallery


@pytest.fixture
def tiny_photos(monkeypatch):
    import polymodal.data.samples as samples

    monkeypatch.setattr(samples, "SKIMAGE_PHOTOS", {"red": ("red", "a red square")})
    monkeypatch.setattr(samples, "SKLEARN_PHOTOS", {"blue": ("blue.jpg", "a blue square")})
    monkeypatch.setattr(samples, "_skimage", lambda name: np.full((4, 4, 3), (200, 0, 0), np.uint8))
    monkeypatch.setattr(samples, "_sklearn", lambda name: np.full((4, 4, 3), (0, 0, 200), np.uint8))
    return samples


def test_gallery_goes_into_a_new_nested_folder_and_keeps_files_already_there(tiny_photos, tmp_path):
    folder = tmp_path / "new" / "gallery"
    paths = tiny_photos.write_sample_gallery(folder)
    assert sorted(p.name for p in paths) == ["blue.jpg", "red.jpg"]
    # a second call does not rewrite the files (a new mtime would invalidate cached image features)
    (folder / "red.jpg").write_bytes(b"kept as it is")
    assert tiny_photos.write_sample_gallery(folder) == paths
    assert (folder / "red.jpg").read_bytes() == b"kept as it is"


def test_gallery_without_scikit_learn_still_has_the_scikit_image_photos(tiny_photos, monkeypatch):
    def missing(name):
        raise ImportError("no sklearn")

    monkeypatch.setattr(tiny_photos, "_sklearn", missing)
    assert list(tiny_photos.sample_photos()) == ["red"]


# ---------------------------------------------------------------------------------------------- augmentation


def test_make_rng_keys_are_deterministic_and_bad_seeds_are_refused():
    assert make_rng(None, 3).integers(10**9) == make_rng(None, 3).integers(10**9) == make_rng(0, 3).integers(10**9)
    with pytest.raises(PolymodalError, match="Generator"):
        make_rng(np.random.default_rng(0), 1)  # keys would be silently ignored
    with pytest.raises(PolymodalError, match="non-negative"):
        make_rng(-1)


def test_apply_crops_the_original_image_then_mirrors_the_crop():
    arr = np.arange(8 * 4 * 3, dtype=np.uint8).reshape(4, 8, 3)
    img = Image.fromarray(arr)
    out = np.asarray(Augment.apply(img, (0, 0, 3, 2), True))
    np.testing.assert_array_equal(out, arr[:2, :3][:, ::-1])


def test_views_needs_at_least_one():
    with pytest.raises(PolymodalError, match="n >= 1"):
        Augment().views(Image.new("RGB", (8, 8)), 0)


def test_every_crop_position_is_reachable():
    aug = Augment(flip=False, scale=(0.25, 0.25), ratio=(1.0, 1.0))  # a 2x2 crop of a 4x4 image
    lefts, tops = set(), set()
    for seed in range(100):
        (left, top, right, bottom), _ = aug.params((4, 4), seed)
        assert (right - left, bottom - top) == (2, 2)
        lefts.add(left), tops.add(top)
    assert lefts == tops == {0, 1, 2}  # the crop may touch the right and bottom edges too


def test_fallback_centre_crop_of_a_very_wide_image_keeps_the_widest_ratio():
    (left, top, right, bottom), _ = Augment(flip=False, scale=(0.9, 1.0), ratio=(1.0, 2.0)).params((1000, 10), 0)
    assert (right - left, bottom - top) == (20, 10) and left == (1000 - 20) // 2


# ---------------------------------------------------------------------------------------------- images


def test_single_channel_arrays_load_as_grey():
    arr = np.full((4, 5, 1), 90, np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(arr)), np.full((4, 5, 3), 90, np.uint8))


def test_an_animation_left_on_a_later_frame_loads_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    img = Image.open(tmp_path / "a.gif")
    img.seek(1)
    assert load_image(img).getpixel((0, 0)) == (255, 0, 0)
    assert img.tell() == 1  # the caller's image is left on its frame (stop 48: it was moved to the first)


def test_out_of_range_samples_are_clipped_not_wrapped():
    arr = np.array([[-5, 128, 300]], dtype=np.int32)
    assert np.asarray(load_image(arr))[0, :, 0].tolist() == [0, 128, 255]
    floats = np.array([[-0.004, 0.5, 2.0]], dtype=np.float32)  # above 1: already 0..255 values (and rounding)
    assert np.asarray(load_image(floats))[0, :, 0].tolist() == [0, 0, 2]  # far below 0 is normalised: refused


def test_a_decompression_bomb_is_a_readable_error(tmp_path, monkeypatch):
    png(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2x the limit: Pillow refuses it
    with pytest.raises(PolymodalError, match="larger than Pillow decodes safely .*; downscale it first"):
        load_image(tmp_path / "big.png")


def test_a_big_local_photo_below_pillows_refusal_loads_without_its_bomb_warning_in_the_cli(tmp_path):
    """In a fresh interpreter where every warning is an error: pytest drops filters set while it collects, so the
    CLI's filter is only seen outside it. The CLI sets it as it starts (here `polymodal --help`)."""
    import subprocess
    import sys

    png(tmp_path / "big.png", size=(64, 64))
    script = (f"from PIL import Image; Image.MAX_IMAGE_PIXELS = 3000\n"  # 4096 pixels: over the warning's limit, under 2x
              f"import contextlib, io\nfrom polymodal import cli\n"
              f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): cli.main(['--help'])\n"
              f"from polymodal.data.images import check_image_file, load_image\n"
              f"check_image_file({str(tmp_path / 'big.png')!r}); print(load_image({str(tmp_path / 'big.png')!r}).size)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "(64, 64)", done.stderr[-500:]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_pixel_arrays_with_nan_or_inf_are_refused(bad):
    arr = np.full((4, 4, 3), 0.5, np.float32)
    arr[1, 2, 0] = bad
    with pytest.raises(PolymodalError, match="holds 1 NaN or infinite values"):
        load_image(arr)


def test_a_very_long_image_keeps_its_centre():
    arr = np.full((10, 400, 3), 255, np.uint8)
    arr[:, 190:210] = (200, 0, 0)  # a red band in the middle of a 40:1 strip
    img = Image.fromarray(arr)
    out = np.asarray(TRANSFORM.pil_crop(img), dtype=int)
    # what resizing the whole strip and centre-cropping gives (without the cut that keeps it small)
    full = np.asarray(img.resize((800, 20), Image.BICUBIC).crop((392, 2, 408, 18)), dtype=int)
    assert np.abs(out - full).max() <= 2 and out[..., 0].mean() > 150 and out[..., 1].mean() < 50



def test_the_crop_box_path_keeps_resize_then_crop_pixels_of_a_long_image():
    # crop_box resizes only the kept square, so it needs no 8:1 cut; a cut would shift the box by the truncation
    arr = np.random.default_rng(0).integers(0, 256, (7, 100, 3), dtype=np.uint8)
    img, t = Image.fromarray(arr), ImageTransform(resize=20, crop=16, crop_box=True)
    full = np.asarray(img.resize((285, 20), Image.BICUBIC).crop((134, 2, 150, 18)), dtype=int)
    assert np.abs(np.asarray(t.pil_crop(img), dtype=int) - full).max() <= 1

def test_source_box_scales_each_axis_by_its_own_factor():
    t = ImageTransform(resize=20, crop=16)
    left, top, right, bottom = t.source_box((100, 30))  # resized to 66 x 20 (long side truncated)
    assert right - left == pytest.approx(16 * 100 / 66) and bottom - top == pytest.approx(16 * 30 / 20)


def test_transform_settings_round_trip_through_a_dict():
    t = ImageTransform(resize=20, crop=16, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    again = ImageTransform.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t and hash(again) == hash(t)


# ---------------------------------------------------------------------------------------------- pairs


@pytest.fixture
def imgs(tmp_path):
    for i in range(3):
        _write_image(tmp_path / f"img{i}.png", i, size=(8, 6))
    return tmp_path


def test_ndjson_files_are_pairs(imgs):
    (imgs / "rows.ndjson").write_text(json.dumps({"image": "img0.png", "caption": "a"}) + "\n")
    assert read_pair_source(imgs / "rows.ndjson").captions == ["a"]


def test_an_empty_caption_key_falls_back_to_the_next_name(imgs):
    rows = [{"image": "", "filepath": "img0.png", "caption": "", "text": "from text"}]
    (imgs / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = read_pair_source(imgs / "rows.jsonl")
    assert ps.captions == ["from text"] and ps.images == [(imgs / "img0.png").resolve()]


def test_csv_image_names_with_spaces_around_them(imgs):
    (imgs / "rows.csv").write_text("image,caption\n img0.png ,a caption\n")
    ps = read_pair_source(imgs / "rows.csv")
    assert ps.captions == ["a caption"] and ps.skipped == []


def test_csv_rows_short_of_fields_are_reported_whatever_the_column_order(imgs):
    (imgs / "rows.csv").write_text("caption,image\nonly a caption\nfine,img1.png\n")
    ps = read_pair_source(imgs / "rows.csv")
    assert ps.captions == ["fine"]
    assert [(loc.rsplit(":", 1)[1], "fields" in why) for loc, why in ps.skipped] == [("2", True)]


def test_caption_files_with_a_byte_order_mark(imgs):
    (imgs / "img0.txt").write_bytes("\ufeffa caption from notepad\n".encode("utf-8"))
    folder = imgs / "only"
    folder.mkdir()
    (imgs / "img0.png").rename(folder / "img0.png")
    (imgs / "img0.txt").rename(folder / "img0.txt")
    assert read_pair_source(folder).captions == ["a caption from notepad"]


def test_an_image_key_naming_a_folder_is_skipped(imgs):
    (imgs / "sub").mkdir()
    (imgs / "rows.jsonl").write_text(json.dumps({"image": "sub", "caption": "x"}) + "\n"
                                     + json.dumps({"image": "img1.png", "caption": "y"}) + "\n")
    ps = read_pair_source(imgs / "rows.jsonl")
    assert ps.captions == ["y"] and "not found" in ps.skipped[0][1]


def test_a_split_always_leaves_train_an_image():
    ps = PairSet.from_pairs([Pair(f"/img/{i}.jpg", f"c{i}") for i in range(40)])
    train, val = split_by_image(ps, 0.99)
    assert len(train.images) == 1 and len(val.images) == 39


def test_an_unreadable_shard_image_names_its_shard(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "x.png", b"not a png")
        _add(tf, "x.txt", b"caption")
    ref, = read_pair_source(tmp_path / "s.tar").images
    with pytest.raises(PolymodalError, match="s.tar#x.png"):
        open_pair_image(ref)


# ---------------------------------------------------------------------------------------------- shards


def test_unpadded_ranges_from_zero_are_not_padded():
    assert expand_braces("{0..10}") == [str(i) for i in range(11)]


def test_a_literal_brace_group_does_not_stop_later_expansion():
    assert expand_braces("x{y}-{1..2}") == ["x{y}-1", "x{y}-2"]


def test_shards_joined_by_double_colon_and_the_same_shard_twice(tmp_path):
    a, b = png(tmp_path / "a.png"), png(tmp_path / "b.png", (0, 0, 255))
    s0, s1 = write_shards([Pair(str(a), "one"), Pair(str(b), "two")], tmp_path / "out", samples_per_shard=1)
    (tmp_path / "out" / "sub").mkdir()
    assert read_pair_source(f"{s0}::{s1}").captions == ["one", "two"]
    assert expand_shards(f"{s0}::{tmp_path}/out/sub/../{s0.name}") == [s0]


def test_images_of_other_formats_are_stored_as_png(tmp_path):
    Image.new("RGB", (6, 4), (10, 120, 240)).save(tmp_path / "a.tiff")
    shard, = write_shards([Pair(str(tmp_path / "a.tiff"), "tiff")], tmp_path / "out")
    sample, = iter_samples(shard)
    assert sample.captions == ["tiff"]
    assert load_image(sample.image).getpixel((0, 0)) == (10, 120, 240)


def test_a_truncated_shard_reports_its_unreadable_tail(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.png", _png_bytes())
        _add(tf, "a.txt", b"first")
        _add(tf, "b.png", _png_bytes() * 40)
        _add(tf, "b.txt", b"second")
    (tmp_path / "cut.tar").write_bytes((tmp_path / "s.tar").read_bytes()[:3000])
    skipped = []
    samples = list(iter_samples(tmp_path / "cut.tar", skipped=skipped))
    assert [s.key for s in samples] == ["a"]
    assert len(skipped) == 1 and "unreadable tar data" in skipped[0][1]


def test_a_json_that_is_not_an_object_skips_the_sample(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        _add(tf, "a.png", _png_bytes())
        _add(tf, "a.json", b"[1, 2]")
        _add(tf, "b.png", _png_bytes())
        _add(tf, "b.txt", b"one\n\n  \ntwo\n")
    skipped = []
    assert [(s.key, s.captions) for s in iter_samples(tmp_path / "s.tar", skipped=skipped)] == [("b", ["one", "two"])]
    assert len(skipped) == 1 and "not an object" in skipped[0][1]


# ---------------------------------------------------------------------------------------------- Trainer


class _Noisy(Objective):
    """Least squares with noise from all three generators (torch, numpy, random); records the batches it sees and
    can stop the process (KeyboardInterrupt) at its n-th call, as a killed run would."""

    name = "noisy"

    def __init__(self, stop_at=None):
        self.calls, self.stop_at, self.seen = 0, stop_at, []

    def compute(self, model, batch):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        x, y = batch
        self.seen.append(x[:, 0].tolist())
        noise = 1 + 0.1 * float(torch.rand(())) + 0.1 * float(np.random.rand()) + 0.1 * random.random()
        return noise * ((model(x) - y) ** 2).mean(), {}


def _noisy_trainer(out, objective, rows=32, **settings):
    torch.manual_seed(0)
    x = torch.randn(rows, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, shuffle=True)  # 4 steps an epoch
    config = TrainConfig(**{"epochs": 3, "lr": 0.05, "warmup_steps": 2, "patience": 0, "log_every": 1, **settings})
    return Trainer(nn.Linear(4, 1), {"noisy": (objective, 1.0, loader)}, config, out, progress=False)


def test_a_run_killed_mid_epoch_resumes_onto_the_same_curve(tmp_path):
    _noisy_trainer(tmp_path / "straight", _Noisy()).fit()
    with pytest.raises(KeyboardInterrupt):  # killed in the third epoch, after logging its first step
        _noisy_trainer(tmp_path / "resumed", _Noisy(stop_at=10)).fit()
    assert [r["step"] for r in read_metrics(tmp_path / "resumed")][-1] == 9
    _noisy_trainer(tmp_path / "resumed", _Noisy()).fit(resume=True)
    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [(r["step"], r["split"]) for r in straight] == [(r["step"], r["split"]) for r in resumed]  # no duplicates
    for a, b in zip(straight, resumed):
        for key in ("loss", "lr", "train_loss"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-6), (key, a, b)


def test_biases_get_no_weight_decay_and_towers_their_own_learning_rate(tmp_path):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.image_tower, self.head = nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.image_tower(x))

    torch.manual_seed(0)
    x = torch.randn(8, 4)
    config = TrainConfig(lr=0.01, tower_lr_scale=0.1, weight_decay=0.2, warmup_steps=0)
    model = Model()
    trainer = Trainer(model, {"fit": (_Noisy(), 1.0, DataLoader(TensorDataset(x, x), batch_size=8))}, config, tmp_path,
                      progress=False)
    settings = {id(p): (g["initial_lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert settings == {id(model.image_tower.weight): (pytest.approx(0.001), 0.2),
                        id(model.image_tower.bias): (pytest.approx(0.001), 0.0),
                        id(model.head.weight): (0.01, 0.2), id(model.head.bias): (0.01, 0.0)}


def test_each_step_draws_one_batch_per_objective_and_short_loaders_cycle(tmp_path):
    long_x, short_x = torch.arange(32.0)[:, None].repeat(1, 4), 100 + torch.arange(16.0)[:, None].repeat(1, 4)
    long, short = _Noisy(), _Noisy()
    objectives = {"long": (long, 1.0, DataLoader(TensorDataset(long_x, long_x[:, :1]), batch_size=8)),
                  "short": (short, 1.0, DataLoader(TensorDataset(short_x, short_x[:, :1]), batch_size=8))}
    trainer = Trainer(nn.Linear(4, 1), objectives, TrainConfig(epochs=1, warmup_steps=0), tmp_path, progress=False)
    trainer.fit()
    assert trainer.step == 4 and len(long.seen) == len(short.seen) == 4
    assert [b[0] for b in short.seen] == [100, 108, 100, 108]


def test_a_metric_that_never_improves_on_its_first_value_stops_the_run(tmp_path):
    best = loop_trainer(tmp_path, eval_fn=_scripted([1, 1, 1, 1, 1]), patience=2).fit()
    # a tie keeps the later, more trained epoch (a saturated metric, e.g. recall over 1 photo, kept epoch 1)
    assert len([r for r in read_metrics(tmp_path) if r["split"] == "val"]) == 3 and best["epoch"] == 3


class _Blocks(nn.Module):
    """A model with progressive unfreezing: records how many image blocks each epoch opens."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.config = SimpleNamespace(image_trainable_blocks=3, text_trainable_layers=0)
        self.opened = []

    def forward(self, x):
        return self.net(x)

    def set_trainable(self, image_blocks, text_layers):
        self.opened.append(image_blocks)


def test_progressive_unfreezing_opens_one_block_every_n_epochs(tmp_path):
    x = torch.randn(8, 4)
    model = _Blocks()
    config = TrainConfig(epochs=7, unfreeze_every=2, warmup_steps=0, patience=0)
    Trainer(model, {"fit": (_Noisy(), 1.0, DataLoader(TensorDataset(x, x[:, :1]), batch_size=8))}, config, tmp_path,
            progress=False).fit()
    assert model.opened == [0, 0, 1, 1, 2, 2, 3]


def test_logged_losses_are_weighted_and_train_loss_is_the_epoch_mean(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    config = TrainConfig(epochs=2, warmup_steps=0, patience=0, log_every=1)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    Trainer(nn.Linear(4, 1), {"noisy": (_Noisy(), 0.5, loader)}, config, tmp_path, progress=False).fit()
    records = read_metrics(tmp_path)
    for epoch in (1, 2):  # a train row and the val row after it number their epoch alike
        steps = [r for r in records if r["split"] == "train" and r["epoch"] == epoch]
        assert len(steps) == 4 and all(r["loss"] == pytest.approx(0.5 * r["noisy/loss"]) for r in steps)
        val, = [r for r in records if r["split"] == "val" and r["epoch"] == epoch]
        assert val["train_loss"] == pytest.approx(np.mean([r["loss"] for r in steps]))


def test_seeds_beyond_numpy_range_are_refused(tmp_path):
    with pytest.raises(PolymodalError, match="seed"):
        TrainConfig(seed=2**32).validate()


def test_resume_keeps_counting_epochs_without_improvement(tmp_path):
    loop_trainer(tmp_path, eval_fn=_scripted([1, 0]), patience=2, epochs=2).fit()  # one bad epoch so far
    loop_trainer(tmp_path, eval_fn=_scripted([0, 0, 0]), patience=2, epochs=5).fit(resume=True)
    assert [r["epoch"] for r in read_metrics(tmp_path) if r["split"] == "val"] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- guards


def test_settings_typed_as_text_take_paths_and_objects_must_be_objects(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class Settings:
        out: str = "run"
        weights: dict = dataclasses.field(default_factory=dict)

    check_types(Settings(out=tmp_path / "run", weights={"a": 1.0}))
    with pytest.raises(PolymodalError, match="weights must be an object"):
        check_types(Settings(weights=[1.0]))


def test_overwrite_removes_a_dangling_link(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model").symlink_to(tmp_path / "gone")
    prepare_run_folder(run, overwrite=True)
    assert not (run / "model").is_symlink()


# ---------------------------------------------------------------------------------------------- GradCache


def _dropout_towers():
    torch.manual_seed(0)
    return (nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5)).double(),
            nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5)).double())


def test_gradcache_loss_that_ignores_the_images_leaves_their_tower_alone():
    image, text = _dropout_towers()
    x, t = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    gradcache_backward(image, text, x, t, lambda i, tt: (tt ** 2).sum(), 2)
    assert image[0].weight.grad is None and text[0].weight.grad is not None


def test_gradcache_replays_leave_the_callers_random_stream_as_one_pass_would():
    image, text = _dropout_towers()
    x, t = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)
    torch.manual_seed(1)
    with torch.no_grad():
        for start in range(0, 5, 2):
            image(x[start:start + 2])
        for start in range(0, 5, 2):
            text(t[start:start + 2])
    expected = torch.rand(4)
    torch.manual_seed(1)
    gradcache_backward(image, text, x, t, lambda i, tt: (i ** 2).sum(), 2)  # only the image side is replayed
    torch.testing.assert_close(torch.rand(4), expected)


def test_gradcache_refuses_a_plain_string_and_scalar_embeddings():
    image, text = _dropout_towers()
    with pytest.raises(PolymodalError, match="texts must be a tensor"):
        gradcache_backward(image, lambda c: text(torch.randn(len(c), 5).double()), torch.randn(4, 6).double(),
                           "a caption", lambda i, tt: (i * tt).sum(), 2)
    with pytest.raises(PolymodalError, match=r"\[b, D\]"):
        gradcache_backward(lambda c: image(c).sum(), text, torch.randn(4, 6).double(), torch.randn(4, 5).double(),
                           lambda i, tt: (i * tt).sum(), 2)


# ---------------------------------------------------------------------------------------------- feature cache


def test_cached_pairs_use_every_cached_view():
    feats = np.arange(3 * 2 * 2, dtype=np.float16).reshape(3, 2, 2)  # [views, N, F]
    ds = CachedPairDataset(feats, ["a", "b"], np.array([0, 1]), seed=0)
    used = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        image, _ = ds[0]
        used.add(next(v for v in range(3) if torch.equal(image, torch.from_numpy(feats[v, 0].astype(np.float32)))))
    assert used == {0, 1, 2}


def test_an_unreadable_feature_cache_file_is_recomputed(images):
    model = FakeImageModel()
    first = np.array(image_features(model, images, progress=False))
    cached, = (images[0].parent / "cache" / "features").glob("image-*.npy")
    cached.write_bytes(b"cut short")
    calls = model.calls
    np.testing.assert_array_equal(image_features(model, images, progress=False), first)
    assert model.calls > calls


@pytest.mark.parametrize("form", ["array", "tensor", "pil", "bytes"])
def test_images_in_memory_are_cached_by_their_content(images, form):
    """str() named an in-memory image in the cache key: a large array prints only its corners, so a second photo
    with the same borders got the first one's cached features."""
    model = FakeImageModel()
    white = np.full((64, 64, 3), 255, np.uint8)
    marked = white.copy()
    marked[16:48, 16:48] = (200, 30, 30)  # same corners, same shape
    as_form = {"array": lambda a: a, "tensor": lambda a: torch.from_numpy(a.copy()), "pil": Image.fromarray,
               "bytes": lambda a: png_bytes(Image.fromarray(a))}[form]
    plain = np.array(image_features(model, [as_form(white)], progress=False))
    other = np.array(image_features(model, [as_form(marked)], progress=False))
    assert not np.array_equal(plain, other) and model.calls == 2
    again = np.array(image_features(model, [as_form(marked.copy())], progress=False))  # equal content: cached
    np.testing.assert_array_equal(again, other)
    assert model.calls == 2
