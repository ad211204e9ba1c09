"""Contrastive training end to end on real photos (tiny runs): CLI, model folder, resume, unfreezing, caching."""

import json

import numpy as np
import pytest
import torch

import polymodal
from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from polymodal.models.dual_encoder import DualEncoder, DualEncoderConfig
from polymodal.train import features as feature_cache
from polymodal.train.metrics import read_metrics
from polymodal.train.objectives import ContrastiveObjective


@pytest.fixture(scope="module")
def pairs_file(gallery):
    """The sample gallery with two captions per photo, as JSONL next to the photos."""
    path = gallery / "pairs.jsonl"
    with path.open("w") as f:
        for name, (_, desc) in {**SKIMAGE_PHOTOS, **SKLEARN_PHOTOS}.items():
            for caption in (desc, f"a picture showing {desc}"):
                f.write(json.dumps({"image": f"{name}.jpg", "caption": caption}) + "\n")
    return path


def _train(capsys, pairs_file, out, *extra):
    code = cli.main(["train", "contrastive", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file),
                     "--out", str(out), "--quiet", "--batch-size", "8", "--warmup-steps", "2", "--log-every", "1", *map(str, extra)])
    assert code == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_writes_a_loadable_model_that_learned(capsys, pairs_file, tmp_path):
    result = _train(capsys, pairs_file, tmp_path / "run", "--epochs", "8", "--lr", "3e-3", "--embed-dim", "64")
    records = read_metrics(tmp_path / "run")
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 8 and val[-1]["train_loss"] < val[0]["train_loss"]
    assert result["best"]["val/rsum"] > val[0]["val/rsum"]
    assert any(r["split"] == "train" and "lr" in r and "samples_per_s" in r for r in records)

    model = polymodal.load(str(tmp_path / "run" / "model"))
    assert model.dim == 64 and model.key.startswith("dual-encoder@")
    img = model.encode_image([pairs_file.parent / "cat.jpg", pairs_file.parent / "rocket.jpg"])
    txt = model.encode_text(["a tabby cat", "a rocket on the launch pad"])
    assert img.shape == (2, 64) and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    assert (img @ txt.T).argmax(axis=1).tolist() == [0, 1]
    # The saved folder holds the heads only: a few hundred KB, not the towers.
    assert (tmp_path / "run" / "model" / "model.safetensors").stat().st_size < 2_000_000

    assert cli.main(["plot", str(tmp_path / "run")]) == 0
    png = tmp_path / "run" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    assert cli.main(["eval", "retrieval", "--pairs", str(pairs_file), "--model", str(tmp_path / "run" / "model")]) == 0
    out = capsys.readouterr()
    metrics = json.loads(out.out)
    assert metrics["images"] == 15 and metrics["t2i_R@5"] > 0.5
    # the run recorded its training photos: scoring them is flagged as optimistic, in the JSON and on stderr
    assert metrics["seen_in_training"] == 15


def test_zeroshot_hook_and_eval_command(capsys, pairs_file, tmp_path, lite, monkeypatch):
    from polymodal import registry

    monkeypatch.setitem(registry.MODELS, "lite", lambda **kw: lite)
    labels = tmp_path / "labels.jsonl"
    rows = [("cat", "cat"), ("coffee", "coffee"), ("rocket", "rocket"), ("motorcycle", "motorcycle"), ("flower", "flower")]
    labels.write_text("".join(json.dumps({"image": str(pairs_file.parent / f"{n}.jpg"), "label": l}) + "\n" for n, l in rows))
    _train(capsys, pairs_file, tmp_path / "run", "--epochs", "2", "--embed-dim", "32", "--zeroshot-labels", labels)
    val = [r for r in read_metrics(tmp_path / "run") if r["split"] == "val"]
    assert all(0 <= r["val/zeroshot_top1"] <= 1 and r["val/zeroshot_top5"] == 1.0 for r in val)  # 5 classes
    assert cli.main(["eval", "zeroshot", "--labels-file", str(labels), "--model", "lite"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] >= 0.8 and result["images"] == 5 and result["classes"] == 5


def test_resume_continues_the_same_loss_curve(capsys, pairs_file, tmp_path, monkeypatch):
    common = ["--epochs", "4", "--lr", "2e-3", "--embed-dim", "32", "--seed", "3", "--views", "2", "--patience", "0",
              "--log-every", "1"]
    _train(capsys, pairs_file, tmp_path / "straight", *common)

    # The same run, interrupted after its second epoch (its checkpoint is written), then resumed.
    from polymodal.train.trainer import Trainer

    real_epoch = Trainer._train_epoch

    def interrupted(self, logger):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, logger)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    base = ["train", "contrastive", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file), "--out",
            str(tmp_path / "resumed"), "--quiet", "--batch-size", "8", "--warmup-steps", "2", *common]
    assert cli.main(base) == 130
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    assert cli.main(base + ["--resume"]) == 0

    straight, resumed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in straight] == [r["step"] for r in resumed]
    for a, b in zip(straight, resumed):
        for key in ("loss", "lr", "train_loss", "val/rsum", "val/t2i_R@1"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (key, a, b)


def test_partial_and_progressive_unfreezing(pairs_file, tmp_path):
    model = DualEncoder(DualEncoderConfig(embed_dim=16, image_trainable_blocks=2))
    pixels = torch.from_numpy(model.transform([pairs_file.parent / "cat.jpg"]))
    with torch.no_grad():
        cached = model.image_cache_input(pixels)
        direct = model._image_batch(pixels)
    assert cached.shape == (1, 192, 7, 7)  # trunk output before block 14, not the final features
    torch.testing.assert_close(model.image_from_cache(cached).detach(), direct, atol=1e-4, rtol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("image_tower.net._blocks.15.") for n in trainable)
    assert any(n.startswith("image_tower.net._blocks.14.") for n in trainable)
    assert not any(n.startswith("image_tower.net._blocks.13.") for n in trainable)
    model.set_trainable(1, 0)  # progressive unfreezing opens blocks one at a time
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("image_tower.net._blocks.14.") for n in trainable)


def test_features_are_cached_on_disk(pairs_file, monkeypatch):
    model = DualEncoder(DualEncoderConfig(embed_dim=16))
    images = [pairs_file.parent / f"{n}.jpg" for n in ("cat", "coffee", "rocket")]
    first = feature_cache.image_features(model, images, views=2, progress=False)
    assert first.shape == (2, 3, 1280)
    assert not np.allclose(first[0], first[1])  # view 1 is an augmented crop/flip
    monkeypatch.setattr(DualEncoder, "image_cache_input", lambda *a: pytest.fail("tower ran again"))
    again = feature_cache.image_features(model, images, views=2, progress=False)
    np.testing.assert_array_equal(first, again)


def test_gradcache_objective_matches_plain_backward(pairs_file):
    torch.manual_seed(0)
    model = DualEncoder(DualEncoderConfig(embed_dim=16)).train()
    images, texts = torch.randn(12, 1280), torch.randn(12, 384)
    for weight in (1.0, 3.0):  # a multi-task weight scales both paths' gradients alike
        grads = []
        for objective in (ContrastiveObjective(), ContrastiveObjective(gradcache_chunk=4)):
            model.zero_grad()
            objective.backward(model, (images, texts), weight)
            grads.append([p.grad.clone() for p in (model.image_head.proj.weight, model.text_head.proj.weight, model.log_logit_scale)])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        if weight == 1.0:
            unit = grads[0]
    torch.testing.assert_close(grads[1][0], 3 * unit[0], atol=1e-5, rtol=1e-4)


def test_spatial_features_with_attention_head_train(capsys, pairs_file, tmp_path):
    _train(capsys, pairs_file, tmp_path / "run", "--epochs", "2", "--embed-dim", "32",
           "--image-features", "spatial", "--image-head", "attention")
    model = polymodal.load(str(tmp_path / "run" / "model"))
    assert model.config.image_head == "attention"
    assert model.encode_image([pairs_file.parent / "cat.jpg"]).shape == (1, 32)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard scalars written


def test_multitask_objectives_are_weighted_and_summed(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    class Pull(Objective):
        """A toy objective: pull the image head's output towards a target."""

        name = "pull"

        def __init__(self, target):
            self.target = target

        def compute(self, model, batch):
            out = model.image_head(batch[0])
            return ((out - self.target) ** 2).mean(), {}

    model = DualEncoder(DualEncoderConfig(embed_dim=4))
    inputs = torch.randn(8, 1280)
    loader = DataLoader(TensorDataset(inputs), batch_size=4)
    trainer = Trainer(model, {"up": (Pull(1.0), 1.0, loader), "down": (Pull(-1.0), 3.0, loader)},
                      TrainConfig(epochs=30, lr=1e-2, warmup_steps=1, patience=0), tmp_path, progress=False)
    trainer.fit()
    with torch.no_grad():
        out = model.image_head(inputs).mean()
    # The weighted optimum of (o-1)^2 + 3(o+1)^2 is o = -0.5: both objectives count, by their weights.
    assert out.item() == pytest.approx(-0.5, abs=0.15)
    records = read_metrics(tmp_path)
    assert any("up/loss" in r and "down/loss" in r for r in records if r["split"] == "train")
