"""Contrastive loss with gather=True under 2-process CPU DDP (gloo, loopback) equals one process on the global batch."""

import importlib
import os
import runpy
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.losses import contrastive_loss
from polymodal.train import distributed

REPO = Path(__file__).resolve().parents[1]
WORLD = 2

# Run by every rank of the shared launch (`launched`) with its folder as sys.argv[1].
SCENARIO = '''
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from polymodal.errors import PolymodalError
from polymodal.losses import LearnableTemperature, contrastive_loss
from polymodal.train import distributed


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 8))
        self.text = nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 8))
        self.temperature = LearnableTemperature()

    def forward(self, images, texts):
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1), self.temperature()


def build():
    torch.manual_seed(0)
    return Towers()


def global_batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 12, generator=g), torch.randn(n, 10, generator=g)


def extras(model, n=16, negatives=6):
    """Hard-negative texts (each rank passes its share, in rank order) and ids: pairs 2k and 2k+1 share a photo."""
    g = torch.Generator().manual_seed(2)
    return F.normalize(model.text(torch.randn(negatives, 10, generator=g)), dim=-1), torch.arange(n) // 2


if __name__ == "__main__":
    assert distributed.init_from_env("gloo")
    rank, world = distributed.rank(), distributed.world_size()
    import logging  # rank 0 says each warning once; the others print errors only (stop 38)

    assert logging.getLogger("polymodal").getEffectiveLevel() == (logging.ERROR if rank else logging.WARNING)
    model = DistributedDataParallel(build())
    images, texts = global_batch()
    b = len(images) // world
    image_emb, text_emb, scale = model(images[rank * b : (rank + 1) * b], texts[rank * b : (rank + 1) * b])
    out = contrastive_loss(image_emb, text_emb, scale, gather=True)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.module.named_parameters()}

    # Negatives and ids are gathered too: the same loss as one process with all negatives and the global ids.
    with torch.no_grad():
        negatives, ids = extras(model.module)
        k = len(negatives) // world
        with_extras = contrastive_loss(image_emb.detach(), text_emb.detach(), scale.detach(), gather=True,
                                       negative_text_emb=negatives[rank * k : (rank + 1) * k],
                                       image_ids=ids[rank * b : (rank + 1) * b]).loss

    # Hard negatives may come in different numbers per rank (rank 0: 5, rank 1: 1): gathered with their padding
    # dropped, and each rank's negatives get world_size times their single-process gradient (see the docstring).
    cut = [0, 5, 6][rank : rank + 2]
    ragged = negatives[cut[0] : cut[1]].clone().requires_grad_()
    ragged_loss = contrastive_loss(image_emb.detach(), text_emb.detach(), scale.detach(), gather=True,
                                   negative_text_emb=ragged).loss
    ragged_loss.backward()

    # Unequal local batches must fail the same clear way on every rank, not hang in the gather.
    try:
        contrastive_loss(image_emb[: rank + 1].detach(), text_emb[: rank + 1].detach(), 10.0, gather=True)
        unequal = "no error"
    except PolymodalError as exc:
        unequal = str(exc)
    # Ranks that read different numbers of images fail alike instead of hanging later; equal counts pass.
    distributed.same_on_all_ranks(7, "a count", "fix it")
    try:
        distributed.same_on_all_ranks(rank, "how many images could be read", "check the files")
        disagree = "no error"
    except PolymodalError as exc:
        disagree = str(exc)
    torch.save({"disagree": disagree, "loss": out.loss.detach(), "logits": out.logits_per_image.detach(), "grads": grads,
                "unequal": unequal, "with_extras": with_extras,
                "ragged_loss": ragged_loss.detach(), "ragged_grad": ragged.grad}, f"{sys.argv[1]}/rank{rank}.pt")
    distributed.barrier()
    dist.destroy_process_group()
'''


@contextmanager
def rendezvous(world: int):
    """The environment that joins ``world`` processes as torchrun's does: a TCPStore hosted here, on a port the OS
    picks, which every rank joins as a client (TORCHELASTIC_USE_AGENT_STORE, as under torchrun's agent). A port
    picked free here and bound by rank 0 about 2 s later, after its imports, could be taken in between."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(world),
           "TORCHELASTIC_USE_AGENT_STORE": "True", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on loopback whatever the hostname resolves to
    try:
        yield env
    finally:
        del store  # the ranks have exited: the server stops


def _launch(script: Path, *args, timeout: float = 60) -> None:
    with rendezvous(WORLD) as env:
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), *map(str, args)],
                env=dict(os.environ, **env, RANK=str(r), LOCAL_RANK=str(r)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(WORLD)
        ]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=timeout)[0])
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n" + "\n".join(logs)
    # the collectives torch 2.13 deprecated warn once per call on every rank: the loss uses their new names
    assert "is deprecated" not in "\n".join(logs), "\n".join(logs)


# The modules whose SCENARIO script every rank runs, in this order, in one launch (each test's own launch started
# Python, torch and polymodal in 2 processes: 3-5 s of a worker's time a test); each then checks what its own wrote.
LAUNCHED = ("test_distributed", "test_s41_dist", "test_s42_dist_cache", "test_s48_dist_grads", "test_s55_scaleout")

# Each rank: the scenarios in turn in one process group, each with its folder as sys.argv[1] and a feature cache of
# its own; one scenario's destroy_process_group and SUM_CHUNK end with it.
RUNNER = '''
import os
import runpy
import sys

import torch.distributed as dist

from polymodal.train import distributed

dist.destroy_process_group = lambda *args, **kwargs: None  # the group is left at exit (distributed._leave_group)
chunk = distributed.SUM_CHUNK
for script in sys.argv[1:]:
    folder = os.path.dirname(script)
    os.environ["POLYMODAL_CACHE"] = os.path.join(folder, "cache")
    sys.argv = [script, folder]
    runpy.run_path(script, run_name="__main__")
    distributed.SUM_CHUNK = chunk
    distributed.barrier()
'''


def launch_scenarios(tmp_path_factory) -> dict:
    """The folder each LAUNCHED module's scenario wrote (its inputs from the module's write_inputs), by name: one
    launch a test run (conftest's `launched`). Under xdist the first worker to ask launches; the other waits on the
    lock, then reads."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "torchrun-scenarios"
    folders = {name: root / name for name in LAUNCHED}
    with FileLock(f"{root}.lock"):
        if not (root / "done").exists():
            shutil.rmtree(root, ignore_errors=True)  # a launch that failed: launched again, to fail the same way
            for name, folder in folders.items():
                module = importlib.import_module(name)
                folder.mkdir(parents=True)
                getattr(module, "write_inputs", lambda folder: None)(folder)
                (folder / "scenario.py").write_text(module.SCENARIO)
            (root / "runner.py").write_text(RUNNER)
            _launch(root / "runner.py", *(folder / "scenario.py" for folder in folders.values()), timeout=300)
            (root / "done").touch()
    return folders


def test_ddp_gathered_loss_equals_single_process(launched):
    out = launched["test_distributed"]
    script = out / "scenario.py"

    # Reference: one process, the same model and the whole batch of 16, no gathering.
    ns = runpy.run_path(str(script), run_name="reference")
    model = ns["build"]()
    image_emb, text_emb, scale = model(*ns["global_batch"]())
    ref = contrastive_loss(image_emb, text_emb, scale)
    ref.loss.backward()
    with torch.no_grad():
        negatives, ids = ns["extras"](model)
        ref_extras = contrastive_loss(image_emb, text_emb, scale, negative_text_emb=negatives, image_ids=ids).loss
    assert ref_extras.item() != pytest.approx(ref.loss.item())  # the extras change the loss, so the check bites
    all_negatives = negatives.detach().clone().requires_grad_()
    ref_ragged = contrastive_loss(image_emb.detach(), text_emb.detach(), scale.detach(),
                                  negative_text_emb=all_negatives).loss
    ref_ragged.backward()

    for r in range(WORLD):
        got = torch.load(out / f"rank{r}.pt")
        torch.testing.assert_close(got["loss"], ref.loss.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(got["logits"], ref.logits_per_image.detach(), atol=1e-5, rtol=0)
        assert "drop_last=True" in got["unequal"], got["unequal"]
        assert got["disagree"] == "the processes disagree on how many images could be read ([0, 1] by rank); check the files"
        torch.testing.assert_close(got["with_extras"], ref_extras, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["ragged_loss"], ref_ragged.detach(), atol=1e-5, rtol=0)
        rows = slice(*[0, 5, 6][r : r + 2])
        torch.testing.assert_close(got["ragged_grad"], WORLD * all_negatives.grad[rows], atol=1e-5, rtol=0)
        assert set(got["grads"]) == {name for name, _ in model.named_parameters()}
        for name, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-5, rtol=0, msg=f"rank {r}: {name}")


def test_helpers_without_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.local_rank() == 0
    assert distributed.is_main()
    distributed.barrier()  # a no-op
    assert distributed.init_from_env() is False


def test_incomplete_environment_is_a_user_error(monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PolymodalError, match="MASTER_ADDR"):
        distributed.init_from_env()
