"""torchrun, LoRA settings: each process draws its own dropout masks (identical initial weights, exact resume); the
one-process training commands refuse torchrun; LoRA's alpha must be finite."""

import math

import pytest
import torch

from polymodal.errors import PolymodalError
from test_distributed import WORLD  # noqa: E402 (tests/ is on the path)

# Run by every rank of test_distributed's shared launch: a straight 2-epoch run (A), and a 1-epoch run (B) resumed
# for its second epoch; every dropout mask each rank drew is saved.
SCENARIO = '''
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from polymodal.train import distributed
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer, set_seed

sys.modules["torch.utils.tensorboard"] = None  # metrics.jsonl only: importing TensorBoard takes seconds
out = Path(sys.argv[1])
assert distributed.init_from_env("gloo")
rank = distributed.rank()
data = TensorDataset(torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.zeros(16))


class Masks(Objective):
    def __init__(self):
        self.masks = []

    def compute(self, model, batch):
        x, y = batch
        h = model[1](model[0](x))
        self.masks.append((h != 0).int())
        return ((model[2](h).squeeze(1) - y) ** 2).mean(), {}


def run(folder, epochs, resume=False, model=None):
    if model is None:
        set_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
    sampler = DistributedSampler(data, num_replicas=distributed.world_size(), rank=rank, seed=0, drop_last=True)
    loader = DataLoader(data, batch_size=2, sampler=sampler, drop_last=True)
    loader.dataset.set_epoch = sampler.set_epoch
    objective = Masks()
    Trainer(model, {"o": (objective, 1.0, loader)}, TrainConfig(epochs=epochs, patience=0, log_every=100),
            out / folder, progress=False).fit(resume=resume)
    return model, torch.stack(objective.masks)


set_seed(0)
init = [p.detach().clone() for p in nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1)).parameters()]
model_a, straight = run("a", 2)
model_b, _ = run("b", 1)
distributed.barrier()  # rank 0 has written b's checkpoint
_, resumed = run("b", 2, resume=True, model=model_b)
torch.save({"init": init, "straight": straight, "resumed": resumed,
            "final": [p.detach().clone() for p in model_a.parameters()]}, out / f"rank{rank}.pt")
distributed.barrier()
'''


def test_torchrun_ranks_draw_their_own_dropout_masks(launched):
    r0, r1 = (torch.load(launched["test_s41_dist"] / f"rank{r}.pt") for r in range(WORLD))
    # the same initial weights on every rank, and the same weights after training (gradients are averaged) ...
    for got in ("init", "final"):
        for a, b in zip(r0[got], r1[got]):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    # ... but sample j of rank 0's batch and sample j of rank 1's do not share a dropout mask
    assert r0["straight"].shape == (8, 2, 16)  # 2 epochs x 4 steps, a batch of 2 on each rank
    assert not torch.equal(r0["straight"], r1["straight"])
    assert (r0["straight"] != r1["straight"]).float().mean() > 0.3  # about half the units differ, as for two draws
    # a run resumed after epoch 1 draws, on each rank, the masks the straight run drew in epoch 2
    for r in (r0, r1):
        assert torch.equal(r["resumed"], r["straight"][4:])


@pytest.mark.parametrize("command", ["captioner", "vqa", "pretrain"])
def test_one_process_commands_refuse_torchrun(command, tmp_path, monkeypatch):
    """Without the refusal every torchrun process trained the whole run by itself and wrote the same folder."""
    from polymodal.train.captioning import CaptionRecipe, train_captioner
    from polymodal.train.pretrain import PretrainRecipe, train_pretrain
    from polymodal.train.vqa import VQARecipe, train_vqa

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    recipe, train = {
        "captioner": (lambda: CaptionRecipe(pairs=[str(tmp_path / "p.jsonl")], out=str(out)), train_captioner),
        "vqa": (lambda: VQARecipe(qa=[str(tmp_path / "qa.jsonl")], out=str(out)), train_vqa),
        "pretrain": (lambda: PretrainRecipe(pairs=[str(tmp_path / "p.jsonl")], out=str(out)), train_pretrain),
    }[command]
    with pytest.raises(PolymodalError, match=f"`polymodal train {command}` trains in one process.*torchrun"):
        train(recipe())
    assert not out.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1 is one process: not refused
    with pytest.raises(PolymodalError) as exc:
        train(recipe())
    assert "torchrun" not in str(exc.value)


@pytest.mark.parametrize("alpha", [math.inf, math.nan])
def test_lora_alpha_must_be_finite(alpha):
    """An infinite or NaN alpha made every adapted layer NaN; training then stopped with 'lower --lr'."""
    from polymodal.models.captioner import CaptionerConfig
    from polymodal.models.lora import LoRALinear

    with pytest.raises(PolymodalError, match="lora_alpha must be a finite number above 0"):
        CaptionerConfig(lora_alpha=alpha).validate()
    with pytest.raises(PolymodalError, match="alpha must be a finite number"):
        LoRALinear(torch.nn.Linear(4, 4), 2, alpha)
    with pytest.raises(PolymodalError, match="rank must be a positive int"):
        LoRALinear(torch.nn.Linear(4, 4), 0, 8.0)
    CaptionerConfig(lora_alpha=32).validate()
    layer = LoRALinear(torch.nn.Linear(4, 4), 2, 8.0)
    assert layer.scale == 4.0


@pytest.mark.parametrize("settings", [{"ratio": (1.0, math.inf)}, {"scale": (0.5,)}, {"ratio": "wide"},
                                      {"scale": (0.5, None)}])
def test_augment_settings_are_one_clear_error(settings):
    """An infinite ratio failed in numpy's draw (OverflowError) at the first photo; a scale of the wrong length with
    Python's unpacking error."""
    from polymodal.data.augment import Augment

    with pytest.raises(PolymodalError, match=f"Augment {next(iter(settings))}=.* is invalid; pass \\(min, max\\)"):
        Augment(**settings)
    Augment(scale=(0.5, 1.0), ratio=(0.5, 2.0))  # still fine
