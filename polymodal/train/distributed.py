"""Small torch.distributed helpers that read torchrun's environment and fall back to one process."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from polymodal.errors import PolymodalError

log = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True once a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK), 0 when not launched by torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0 (or without distribution): the process that logs, saves and evaluates."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def same_on_all_ranks(value: int, what: str, fix: str) -> None:
    """Raise the same PolymodalError on every rank when ranks hold different values of ``what`` (they would
    otherwise run different numbers of steps and hang in a collective)."""
    if not is_distributed() or world_size() == 1:
        return
    values: list = [None] * world_size()
    dist.all_gather_object(values, int(value))
    if len(set(values)) > 1:
        raise PolymodalError(f"the processes disagree on {what} ({values} by rank); {fix}")


def refuse_torchrun(command: str) -> None:
    """`command` trains in one process: under torchrun every process would train the whole run on its own (the same
    data, the same steps) and write the same run folder (metrics.jsonl rows twice, a TensorBoard file and a result
    line per process). Refuse on every process, before anything is read or written."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        world = 1
    if world > 1:
        raise PolymodalError(f"`polymodal {command}` trains in one process and does not split its work under "
                             f"torchrun (each of the {world} processes would train the whole run and write the same "
                             f"folder); start it as `polymodal {command} ...`. `train contrastive` is the command "
                             "that trains across torchrun processes")


def init_from_env(backend: str = "gloo") -> bool:
    """Join the process group torchrun describes in RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.

    Returns True when distributed. A no-op (False) when none of the variables are set (a plain `python` run) or a
    group already exists (True). With backend="nccl" the process's GPU is set from LOCAL_RANK first.
    """
    if is_distributed():
        return True
    present = [name for name in _TORCHRUN_VARS if name in os.environ]
    if not present:
        return False
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise PolymodalError(
            f"distributed environment is incomplete: {', '.join(missing)} not set; launch with "
            "`torchrun --nproc_per_node N ...` or set all of " + ", ".join(_TORCHRUN_VARS)
        )
    if not dist.is_available():
        raise PolymodalError("this torch build has no torch.distributed; install a torch build with it")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)  # reads the env:// variables checked above
    log.info("joined process group: rank %d of %d (%s)", rank(), world_size(), backend)
    if rank() != 0:  # the ranks read the same settings and data: rank 0 says each warning once (errors still print)
        logging.getLogger("polymodal").setLevel(logging.ERROR)
    return True
