"""samples_per_s of a multi-objective run counts each step's captions, whatever the order of the objectives (an ITM
batch holds three rows per caption: the positive and two negatives)."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain import _toy_caption_data  # noqa: E402

from polymodal.train import trainer as trainer_module
from polymodal.train.pretrain import CaptionRows
from polymodal.train.pretrain_objectives import ITMObjective, MLMObjective, MRMObjective
from polymodal.train.trainer import TrainConfig, Trainer


def test_itm_mlm_mrm_batches_count_their_captions():
    data = _toy_caption_data(hard_captions=np.array([[2], [4], [6], [0]]),
                             hard_images=np.array([[3], [3], [0], [0], [1], [1], [2], [2]]))
    data.mlm = (np.zeros((8, 3, 384), np.float16), np.full(8, 3), np.full((8, 3), 7))
    captions = [0, 3, 5]
    for kind, objective in (("itm", ITMObjective()), ("mlm", MLMObjective()), ("mrm", MRMObjective())):
        batch = CaptionRows(data, kind, hard=1.0).collate(captions)
        assert objective.samples(batch) == len(captions), kind


class _Rows:
    """A stand-in objective whose batch holds ``rows`` rows per sample (as ITM's holds 3)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def samples(self, batch) -> int:
        return len(batch[0]) // self.rows

    def backward(self, model, batch, weight=1.0):
        loss = (model.weight ** 2).sum()
        (weight * loss).backward()
        return {"loss": loss.item()}


class _Loader(list):
    dataset = None


def _samples_per_s(order, tmp_path, monkeypatch):
    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(ticks)))
    model = nn.Linear(2, 1)
    batches = {3: _Loader([(torch.zeros(12),)] * 2), 1: _Loader([(torch.zeros(4),)] * 2)}  # 4 captions a step either way
    objectives = {f"o{k}": (_Rows(k), 1.0, batches[k]) for k in order}
    out = tmp_path / "-".join(map(str, order))
    Trainer(model, objectives, TrainConfig(epochs=1, log_every=1), out, progress=False).fit()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in rows if r["split"] == "train"]


def test_samples_per_s_does_not_depend_on_the_order_of_objectives(tmp_path, monkeypatch):
    assert _samples_per_s((3, 1), tmp_path, monkeypatch) == _samples_per_s((1, 3), tmp_path, monkeypatch)
