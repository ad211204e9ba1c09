"""The README's fine-tuning recipe, walked as a user with their own photos (helper review s48/recipe): a training run
still going and the same command again with --resume or --overwrite in another terminal both wrote one run folder
(interleaved metrics.jsonl, a checkpoint and RUN/model from either process); the second is now refused in one line.
The plot of a short run labels only whole epochs and steps."""

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polymodal import cli
from polymodal.data.samples import SKIMAGE_PHOTOS
from polymodal.errors import PolymodalError
from polymodal.train.metrics import read_metrics
from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer

pytest.importorskip("fcntl")  # the run folder's lock is an flock: none on Windows

BUSY = "another process is training into"


@contextmanager
def _another_process_training(folder):
    """A second process holding the run folder as a training process does, until the block ends."""
    code = ("import sys\nfrom polymodal.train import run_lock\nwith run_lock.holding(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


@pytest.fixture(scope="module")
def pairs_file(gallery, tmp_path_factory):
    path = tmp_path_factory.mktemp("s48_recipe") / "pairs.jsonl"  # beside, not in, the shared gallery
    path.write_text("".join(json.dumps({"image": str(gallery / f"{name}.jpg"), "caption": desc}) + "\n"
                            for name, (_, desc) in SKIMAGE_PHOTOS.items()))
    return path


def _contrastive(pairs_file, out, *extra) -> list[str]:
    return ["train", "contrastive", "--pairs", str(pairs_file), "--val-pairs", str(pairs_file), "--out", str(out),
            "--quiet", "--embed-dim", "16", *map(str, extra)]


def test_resume_or_overwrite_while_the_run_still_trains_is_refused(pairs_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_contrastive(pairs_file, out, "--epochs", 1)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    with _another_process_training(out):
        for flag in ("--resume", "--overwrite"):
            assert cli.main(_contrastive(pairs_file, out, "--epochs", 2, flag)) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and BUSY in err and "Traceback" not in err, err
    # nothing moved aside, rewritten or appended while the other process had the folder
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert cli.main(_contrastive(pairs_file, out, "--epochs", 2, "--resume")) == 0  # once it is gone: resumes
    assert max(r["epoch"] for r in read_metrics(out)) == 2


class _Fit(Objective):
    name = "fit"

    def compute(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {}


def _trainer(out):
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    config = TrainConfig(epochs=2, lr=0.05, warmup_steps=1, patience=0, weight_decay=0.0)
    return Trainer(nn.Linear(4, 1), {"fit": (_Fit(), 1.0, loader)}, config, out, progress=False)


def test_trainer_refuses_a_folder_another_process_trains_into(tmp_path):
    # two commands that both passed the early check (say, both still caching features) meet here
    out = tmp_path / "run"
    out.mkdir()
    with _another_process_training(out):
        with pytest.raises(PolymodalError, match=BUSY):
            _trainer(out).fit()
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pt").exists()


def test_the_lock_goes_when_training_ends(tmp_path):
    # a notebook that trained into a folder must not keep a later `polymodal train --resume` of it out
    out = tmp_path / "run"
    _trainer(out).fit()
    with _another_process_training(out):  # the holder could not take it (and said so) were it still held here
        pass


def test_plot_of_a_short_run_labels_whole_epochs_and_steps(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from polymodal.train import plot

    rows = [{"step": 1, "epoch": 1, "split": "train", "loss": 5.0, "lr": 1e-3},
            {"step": 1, "epoch": 1, "split": "val", "train_loss": 5.0, "val/t2i_R@1": 0.1},
            {"step": 2, "epoch": 2, "split": "train", "loss": 4.0, "lr": 5e-4},
            {"step": 2, "epoch": 2, "split": "val", "train_loss": 4.0, "val/t2i_R@1": 0.2}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ticks = []
    close = plt.close

    def keep_ticks(fig=None):  # the figure's x ticks, read just before plot_run closes it
        if fig is not None and hasattr(fig, "axes"):
            fig.canvas.draw()
            ticks.extend(t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
        close(fig)

    monkeypatch.setattr(plt, "close", keep_ticks)
    plot.plot_run(tmp_path)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
