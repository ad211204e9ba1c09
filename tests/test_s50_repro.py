"""Reproducible, resumable runs: a run killed outright (SIGKILL, the out-of-memory killer) while it wrote its
checkpoint resumes to the straight run's weights and leaves no hidden temporary file behind. Toy model, seconds."""

import os
import signal
import subprocess
import sys
import textwrap

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from polymodal.train.objectives import Objective
from polymodal.train.trainer import TrainConfig, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Fit(Objective):
    name = "fit"

    def compute(self, model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {}


def _trainer(out, epochs=3):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None]
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)  # shuffled: the order is seeded too
    config = TrainConfig(epochs=epochs, lr=0.05, warmup_steps=2, patience=0, seed=3)
    return Trainer(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1)), {"fit": (_Fit(), 1.0, loader)},
                   config, out, progress=False)


# the run of _trainer in a process that SIGKILLs itself inside epoch 2's checkpoint write, after the temporary
# file is complete and before it is renamed (the moment that leaves the largest leftover)
_KILLED_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{repo!r}]
    from tests.test_s50_repro import _trainer
    real_replace, writes = os.replace, []

    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            writes.append(dst)
            if len(writes) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    os.replace = replace
    _trainer({out!r}).fit()
""")


def _hidden(folder):
    return sorted(p.name for p in folder.rglob(".*"))


def test_a_run_killed_while_writing_its_checkpoint_resumes_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "run"
    code = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE.format(repo=REPO, out=str(out))],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True).returncode
    assert code == -signal.SIGKILL
    assert any(name.startswith(".checkpoint.pt.") for name in _hidden(out))  # what the kill left: epoch 2's bytes
    resumed = _trainer(out)
    resumed.fit(resume=True)
    assert _hidden(out) == []  # the leftover (as large as a checkpoint) used to stay for good, one per such kill
    straight = _trainer(tmp_path / "straight")
    straight.fit()
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)  # the resumed run ends where the uninterrupted one does, to the bit


def test_a_fresh_run_into_the_folder_removes_the_leftover_too(tmp_path):
    """A run killed before its first checkpoint was renamed into place is started again (--overwrite): the
    leftover went with it into the new run's folder."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.k2v9x1.tmp").write_bytes(b"\0" * 1000)
    (out / ".metrics.jsonl.a1b2c3.tmp").write_bytes(b"{}")
    (out / ".notes.txt.tmp").write_bytes(b"not a run file: left alone")
    _trainer(out, epochs=1).fit()
    assert _hidden(out) == [".notes.txt.tmp"]
