"""The Trainer's loop on a toy model: the warmup + cosine schedule, gradient clipping, which epoch counts as best,
early stopping, and settings checks. Seconds on a CPU."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polymodal.errors import PolymodalError
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer, warmup_cosine
from polymodal.train.metrics import read_metrics


class _Fit(Objective):
    """Least squares of a linear model; `scale` makes the loss (and its gradient) as large as wanted."""

    name = "fit"

    def __init__(self, scale=1.0):
        self.scale = scale

    def compute(self, model, batch):
        x, y = batch
        return self.scale * ((model(x) - y) ** 2).mean(), {}


def _trainer(tmp_path, eval_fn=None, scale=1.0, **settings):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None]
    loader = DataLoader(TensorDataset(x, y), batch_size=8)  # 4 steps an epoch
    config = TrainConfig(**{"epochs": 5, "lr": 0.05, "warmup_steps": 2, "patience": 0, "weight_decay": 0.0, **settings})
    return Trainer(nn.Linear(4, 1), {"fit": (_Fit(scale), 1.0, loader)}, config, tmp_path, eval_fn=eval_fn,
                   progress=False)


def test_warmup_then_cosine_to_zero():
    f = warmup_cosine(4, 20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(12) == pytest.approx(0.5)  # half-way through the decay
    assert f(19) < 0.02 and f(25) == pytest.approx(0.0, abs=1e-12)  # never negative past the end


def test_logged_learning_rate_rises_then_decays(tmp_path):
    trainer = _trainer(tmp_path, epochs=3, log_every=1)
    trainer.fit()
    lrs = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert len(lrs) == 12
    # each row logs the rate its own step ran at: half-way through the 2 warmup steps, then the peak
    assert lrs[0] == pytest.approx(0.025) and lrs[1] == pytest.approx(0.05) and max(lrs) == pytest.approx(0.05)
    assert 0 < lrs[-1] < 0.05 * 0.05 and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))  # the last step still learns


def test_gradients_are_clipped_before_each_step(tmp_path):
    norms = []
    for clip in (0.1, 0.0):  # 0 turns clipping off
        trainer = _trainer(tmp_path / str(clip), scale=1e4, grad_clip=clip, epochs=1)

        def record(optimizer, args, kwargs, clip=clip):  # runs just before each optimizer step
            grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norms.append((clip, torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()))

        trainer.optimizer.register_step_pre_hook(record)
        trainer.fit()
    clipped = [n for c, n in norms if c == 0.1]
    assert len(clipped) == 4 and max(clipped) <= 0.1 + 1e-5
    assert max(n for c, n in norms if c == 0.0) > 10


def test_without_validation_the_lowest_training_loss_is_best(tmp_path):
    best = _trainer(tmp_path, epochs=3).fit()
    assert best["epoch"] == 3  # the loss only falls on this easy fit


def _scripted(scores):
    it = iter(scores)
    return lambda model: {"val/rsum": next(it)}


@pytest.mark.parametrize("scores, epochs_run, best_epoch", [
    ([1, 0, 0, 0, 0], 3, 1),  # two epochs without improvement stop the run
    ([1, 0, 2, 0, 0], 5, 3),  # an improvement resets the count
    ([1, 2, 3, 4, 5], 5, 5),
])
def test_early_stopping_counts_epochs_since_the_best(tmp_path, scores, epochs_run, best_epoch):
    best = _trainer(tmp_path, eval_fn=_scripted(scores), patience=2).fit()
    assert len([r for r in read_metrics(tmp_path) if r["split"] == "val"]) == epochs_run
    assert best["epoch"] == best_epoch and best["val/rsum"] == max(scores[:epochs_run])


@pytest.mark.parametrize("scores, epochs_run, best_epoch, saves", [
    ([5, 1, 2], 2, 0, 1),  # no epoch beats the model it started from: RUN/model stays that model
    ([5, 1, 6, 2, 3], 4, 2, 2),
    ([5, 5, 1], 2, 1, 2),  # a tie: the trained epoch is kept, but it does not hold off early stopping
])
def test_fine_tuning_keeps_the_starting_model_unless_an_epoch_beats_it(tmp_path, caplog, scores, epochs_run,
                                                                       best_epoch, saves):
    saved = []
    with caplog.at_level("WARNING"):
        best = _trainer(tmp_path, eval_fn=_scripted(scores), patience=2).fit(
            on_best=lambda m: saved.append(m.weight.detach().clone()), score_start=True)
    val = [r for r in read_metrics(tmp_path) if r["split"] == "val"]
    assert [r["epoch"] for r in val] == list(range(epochs_run + 1))  # epoch 0: before training
    assert best["epoch"] == best_epoch and best["val/rsum"] == scores[best_epoch]
    assert len(saved) == saves
    assert ("no epoch beat the model training started from (val/rsum 5 before training)" in caplog.text) == (
        best_epoch == 0)
    assert ("train again with --overwrite" in caplog.text) == (best_epoch == 0)  # the run folder holds a run now


def test_without_a_starting_model_there_is_no_epoch_0(tmp_path):
    _trainer(tmp_path, eval_fn=_scripted([1, 2, 3, 4, 5])).fit()
    assert [r["epoch"] for r in read_metrics(tmp_path) if r["split"] == "val"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("setting", [{"grad_clip": -1.0}, {"warmup_steps": -1}, {"lr": 0.0}, {"patience": -2},
                                     {"warmup_fraction": 1.5}, {"warmup_cap": -1}])
def test_out_of_range_settings_are_refused(tmp_path, setting):
    name = next(iter(setting))
    with pytest.raises(PolymodalError, match=name):
        _trainer(tmp_path, **setting)



@pytest.mark.parametrize("setting", ["lr", "weight_decay", "grad_clip", "tower_lr_scale"])
def test_infinite_settings_are_refused(setting):
    with pytest.raises(PolymodalError, match=f"{setting} must be .* and finite, got inf"):
        TrainConfig(**{setting: float("inf")}).validate()


class _Blows(_Fit):
    """The loss turns infinite at step `at` (1-based): a learning rate far too high, bad data."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def compute(self, model, batch):
        self.calls += 1
        loss, extra = super().compute(model, batch)
        return (loss * float("inf") if self.calls >= self.at else loss), extra


def _blowing_trainer(out, at, **settings):
    trainer = _trainer(out, epochs=3, **settings)
    loader = trainer.objectives["fit"][2]
    trainer.objectives = {"fit": (_Blows(at), 1.0, loader)}
    return trainer


def test_a_non_finite_loss_stops_the_run_before_the_step_and_a_first_epoch_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    (out / "notes.txt").parent.mkdir()
    (out / "notes.txt").write_text("mine")  # not a run's file: kept
    trainer = _blowing_trainer(out, at=3)
    before = trainer.model.weight.detach().clone()
    with pytest.raises(PolymodalError, match=r"loss became inf at step 3 \(epoch 1\).*lower --lr"):
        trainer.fit(on_start=lambda: (out / "train_config.json").write_text("{}"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no half-written run to block the next one
    assert torch.isfinite(trainer.model.weight).all() and not torch.equal(trainer.model.weight, before)


def test_a_non_finite_loss_after_a_checkpoint_keeps_the_run_to_resume(tmp_path):
    trainer = _blowing_trainer(tmp_path, at=6)  # epoch 1 (steps 1-4) finishes and is saved
    with pytest.raises(PolymodalError, match="loss became inf at step 6 "):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").is_file()
    rows = read_metrics(tmp_path)
    assert rows and all(r["loss"] == r["loss"] and abs(r["loss"]) < float("inf") for r in rows if "loss" in r)


def test_a_model_with_every_part_frozen_is_refused(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.model.requires_grad_(False)
    with pytest.raises(PolymodalError, match="nothing is left to train"):
        Trainer(trainer.model, trainer.objectives, trainer.cfg, tmp_path, progress=False)


@pytest.mark.parametrize("batch", [16, 4])  # fewer / more steps per epoch than the 4 the epochs so far took
def test_a_resume_with_other_steps_per_epoch_goes_on_down_the_curve(tmp_path, batch):
    """Another --batch-size, or another torchrun process count, changes the steps per epoch on --resume: the cosine
    went on from where it was and ended at the last step, instead of being laid over epochs x the new steps per epoch
    (a rate of 0 for every remaining step when there are fewer, a rate that never decays when there are more)."""
    first = _trainer(tmp_path, epochs=4, log_every=1)  # 4 steps an epoch
    first.fit()  # 4 epochs done
    resumed = _trainer(tmp_path, epochs=8, log_every=1)
    resumed.objectives["fit"] = (resumed.objectives["fit"][0], 1.0,
                                 DataLoader(resumed.objectives["fit"][2].dataset, batch_size=batch))
    resumed.steps_per_epoch = 32 // batch
    resumed.fit(resume=True)
    lrs = [r["lr"] for r in read_metrics(tmp_path) if r["split"] == "train" and r["step"] > 16]
    assert len(lrs) == 4 * 32 // batch
    assert all(0 < lr for lr in lrs), lrs  # every resumed step learns
    assert all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.05 * 0.05  # and the cosine ends at the run's end


def test_a_learned_temperature_is_clamped_to_clips_range_after_each_step(tmp_path):
    """A too-high --lr drove the log logit scale to -inf: contrastive_loss then refused "logit_scale is 0.0" (an API
    message no flag answers) or warned that it "looks like a temperature". Clamped in place after each step, as CLIP
    does, the scale stays in [1, 100] (and can come back, which the forward clamp alone cannot)."""
    import math

    class _Scaled(nn.Linear):
        def __init__(self):
            super().__init__(4, 1)
            self.log_logit_scale = nn.Parameter(torch.tensor(math.log(14.3)))

    class _Push(_Fit):  # a loss that pulls the scale down hard
        def compute(self, model, batch):
            loss, metrics = super().compute(model, batch)
            return loss + 1e3 * model.log_logit_scale, metrics

    x = torch.randn(32, 4)
    loader = DataLoader(TensorDataset(x, x[:, :1]), batch_size=8)
    model = _Scaled()
    Trainer(model, {"fit": (_Push(), 1.0, loader)}, TrainConfig(epochs=2, lr=10.0, patience=0), tmp_path,
            progress=False).fit()
    assert 0.0 <= float(model.log_logit_scale.detach()) <= math.log(100.0)


def test_samples_per_second_counts_every_rank(tmp_path, monkeypatch):
    """Under torchrun each rank takes a batch a step: samples/s (bar, metrics.jsonl) is the run's, not one rank's."""
    import itertools
    import types

    import polymodal.train.distributed as distributed
    import polymodal.train.trainer as trainer_module

    def rates(world: int, out) -> list[float]:
        clock = itertools.count()  # a second a call: the same readings for both runs
        monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        _trainer(out, epochs=1, log_every=1).fit()
        return [r["samples_per_s"] for r in read_metrics(out) if r["split"] == "train"]

    one, two = rates(1, tmp_path / "one"), rates(2, tmp_path / "two")
    assert one and two == [2 * r for r in one]
