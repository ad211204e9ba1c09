"""Small torch.distributed helpers that read torchrun's environment and fall back to one process."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
from contextlib import contextmanager
from typing import Sequence

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


class SaidElsewhere(PolymodalError):
    """An error another process of this torchrun run prints: each made the same mistake (a missing --pairs file),
    or another made one of its own. The CLI exits 2 without a line, so the user reads a mistake once, not once per
    process (torchrun's report still lists each process's exit)."""


def error_of_every_rank(message: str) -> PolymodalError:
    """The error each rank raises alike (after a collective that told them all): rank 0 prints it."""
    return PolymodalError(message) if rank() == 0 else SaidElsewhere(message)


@contextmanager
def said_once():
    """Run a block every process runs alike (checks of the same settings and files), then learn how the others
    fared: a mistake they all make is printed by the first process that made it only, and a mistake some make stops
    the others at once, silently, instead of in their next collective. The end of the block is a collective: it
    must hold none itself (a process that failed would not join it)."""
    if not is_distributed() or world_size() == 1:
        yield
        return
    error = None
    try:
        yield
    except PolymodalError as exc:
        error = exc
    said: list = [None] * world_size()
    dist.all_gather_object(said, None if error is None else str(error))
    if error is not None and said.index(str(error)) == rank():
        raise error
    if error is not None:
        raise SaidElsewhere(str(error)) from None
    first = next((r for r, text in enumerate(said) if text is not None), None)
    if first is not None:
        raise SaidElsewhere(f"process {first} of {world_size()} stopped: {said[first]}")


def same_on_all_ranks(value: int, what: str, fix: str) -> None:
    """Raise the same PolymodalError on every rank when ranks hold different values of ``what`` (they would
    otherwise run different numbers of steps and hang in a collective)."""
    if not is_distributed() or world_size() == 1:
        return
    values: list = [None] * world_size()
    dist.all_gather_object(values, int(value))
    if len(set(values)) > 1:
        raise error_of_every_rank(f"the processes disagree on {what} ({values} by rank); {fix}")


def same_rows_on_all_ranks(rows: Sequence[str], what: str, fix: str) -> None:
    """Raise the same PolymodalError on every rank when the ranks read different ``rows`` (their data's lines, in
    order; a count and a hash are compared). The processes build the feature caches by summing their shares: other
    data there made gloo abort a process ("Received data size doesn't match expected size"), or, at the same count,
    mixed one process's photos with another's captions."""
    if not is_distributed() or world_size() == 1:
        return
    seen: list = [None] * world_size()
    dist.all_gather_object(seen, (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()))
    if len(set(seen)) > 1:
        counts = [n for n, _ in seen]
        differ = f"{counts} rows by rank" if len(set(counts)) > 1 else f"{counts[0]} rows each, with other contents"
        raise error_of_every_rank(f"the processes read different {what} ({differ}); {fix}")


def share_of_batches(n: int, batch_size: int, split: bool = True) -> range:
    """Starts of the batches (of ``batch_size`` rows out of ``n``) this process computes when the processes build a
    cache together: rank r takes batches r, r + world, ... (every batch without torchrun, or ``split`` False)."""
    if not split:
        return range(0, n, batch_size)
    return range(rank() * batch_size, n, world_size() * batch_size)


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (a collective: each one must call it), so that all take one path."""
    if not is_distributed() or world_size() == 1:
        return flag
    t = torch.tensor([int(bool(flag))])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_shape(shape: tuple | None) -> tuple | None:
    """The first process's non-None ``shape`` (each passes its own; a collective), or None when every one's is."""
    if not is_distributed() or world_size() == 1:
        return shape
    shapes: list = [None] * world_size()
    dist.all_gather_object(shapes, shape)
    return next((tuple(x) for x in shapes if x is not None), None)


SUM_CHUNK = 1 << 24  # values per all_reduce: a float32 copy of one chunk (64 MB) at a time, not of the whole cache


def sum_in_place(fill) -> None:
    """Sum a cache array over the processes, in place, in float32 chunks. ``fill`` (a polymodal.cache.CacheFill)
    holds this process's share of the rows and zeros elsewhere, so the sum is every row exactly (NaN rows, images
    that could not be read, stay NaN). A chunk at a time from its file: each process used to hold the whole array in
    memory, though it computed a share of it (a grid cache for 82,000 photos is ~10 GB)."""
    if not is_distributed() or world_size() == 1:
        return
    import numpy as np

    size = int(np.prod(fill.shape))
    for start in range(0, size, SUM_CHUNK):
        t = torch.from_numpy(np.array(fill.values(start, min(SUM_CHUNK, size - start)), dtype=np.float32))
        dist.all_reduce(t)
        fill.write(start, t.numpy().astype(fill.dtype))


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over the processes, in place (what DDP does), in buckets of up to SUM_CHUNK
    values: one collective each, not one per parameter. A parameter no process has a gradient for keeps none, as in
    one process (a zero one would not be the same: AdamW would decay it and move it on by its momentum); one that
    only some have gets the others' zeros."""
    params = [p for p in params if p.requires_grad]
    if not is_distributed() or world_size() == 1 or not params:
        return
    held = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)  # nccl: GPU
    dist.all_reduce(held)
    live, bucket, size = [p for p, h in zip(params, held.tolist()) if h], [], 0
    for i, p in enumerate(live):
        bucket.append(p)
        size += p.numel()
        if i + 1 < len(live) and size + live[i + 1].numel() <= SUM_CHUNK:
            continue
        flat = torch.cat([(q.grad if q.grad is not None else torch.zeros_like(q)).reshape(-1).float() for q in bucket])
        dist.all_reduce(flat)
        flat /= world_size()
        for q, g in zip(bucket, flat.split([q.numel() for q in bucket])):
            q.grad = g.view_as(q).to(q.dtype)
        bucket, size = [], 0


# what gloo's collectives say when a process of the group has exited: "Connection closed by peer [...]. This is
# typically caused by a remote worker crashing" (and "reset by peer" when the exit cut a send short)
_PEER_GONE = ("closed by peer", "reset by peer", "remote worker crash")


def another_process_stopped(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another torchrun process stopped (with an error of its own,
    which it printed, or killed, which torchrun reports): this process's traceback would only bury that. Also while
    the group is being joined: a process that stops right after joining leaves the others in gloo's connectFullMesh
    (seen on a busy machine)."""
    return isinstance(exc, RuntimeError) and place()[1] > 1 and any(text in str(exc) for text in _PEER_GONE)


def place() -> tuple[int, int]:
    """(this process's rank, the world size): the group's once joined, else what torchrun launched it as."""
    if is_distributed():
        return rank(), world_size()
    return _launched("RANK", 0), _launched("WORLD_SIZE", 1)


def _launched(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default) or default)
    except ValueError:
        return default


def refuse_torchrun(command: str) -> None:
    """`command` trains in one process: under torchrun every process would train the whole run on its own (the same
    data, the same steps) and write the same run folder (metrics.jsonl rows twice, a TensorBoard file and a result
    line per process). Refuse on every process, before anything is read or written."""
    world = _launched("WORLD_SIZE", 1)
    if world > 1:
        raise PolymodalError(f"`polymodal {command}` trains in one process and does not split its work under "
                             f"torchrun (each of the {world} processes would train the whole run and write the same "
                             f"folder); start it as `polymodal {command} ...`. `train contrastive` is the command "
                             "that trains across torchrun processes")


def _leave_group() -> None:
    """Stop the group's threads while the interpreter still runs: a process that exited with a gloo group up
    aborted now and then ("terminate called without an active exception", exit 134, about 1 run in 8 on 2 cores),
    and torchrun then reported a finished run as failed."""
    if is_distributed():
        dist.destroy_process_group()


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
    atexit.register(_leave_group)
    log.info("joined process group: rank %d of %d (%s)", rank(), world_size(), backend)
    if rank() != 0:  # the ranks read the same settings and data: rank 0 says each warning once (errors still print)
        logging.getLogger("polymodal").setLevel(logging.ERROR)
    return True
