"""Gradients averaged over torchrun processes (stop 48): a parameter no process has a gradient for keeps none, as in
one process. A zero gradient is not the same: AdamW decays the weight and moves it on by its momentum."""

import torch

from test_distributed import WORLD

# Run by every rank of test_distributed's shared launch.
SCENARIO = '''
import sys

import torch
import torch.distributed as dist

from types import SimpleNamespace

from polymodal.train import distributed
from polymodal.train.trainer import Trainer

if __name__ == "__main__":
    assert distributed.init_from_env("gloo")
    rank = distributed.rank()
    both, some, none = (torch.nn.Parameter(torch.ones(n)) for n in (3, 2, 4))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    both.grad = torch.full((3,), float(rank + 1))
    if rank == 0:
        some.grad = torch.tensor([4.0, 8.0])
    distributed.SUM_CHUNK = 4  # two buckets: (both), (some)
    optimizer = torch.optim.AdamW([{"params": [both, some]}, {"params": [none, frozen]}])
    Trainer._sync_gradients(SimpleNamespace(optimizer=optimizer))
    torch.save({"both": both.grad, "some": some.grad, "none": none.grad, "frozen": frozen.grad},
               f"{sys.argv[1]}/rank{rank}.pt")
    distributed.barrier()
    dist.destroy_process_group()
'''


def test_gradients_are_averaged_and_a_parameter_without_any_keeps_none(launched):
    for r in range(WORLD):
        got = torch.load(launched["test_s48_dist_grads"] / f"rank{r}.pt")
        torch.testing.assert_close(got["both"], torch.full((3,), 1.5))
        torch.testing.assert_close(got["some"], torch.tensor([2.0, 4.0]))
        assert got["none"] is None and got["frozen"] is None, got
