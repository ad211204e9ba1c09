"""One training process at a time per run folder. A run still going (under nohup, in another terminal) and the same
command again with --resume or --overwrite both wrote metrics.jsonl, checkpoint.pt and RUN/model, without a word:
interleaved curves, and a model from either process. The lock is an flock on the run folder itself, so the folder
holds no extra file (what marks it as a run, and what --overwrite moves aside, are unchanged); it goes with the
process, so a killed run leaves nothing to clean up. Where there are no such locks (Windows, some network mounts)
training goes on unguarded, as before."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from polymodal.errors import PolymodalError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def refuse_if_busy(out) -> None:
    """Before anything is read or cached: one line if another process is training into ``out``. A shared lock: the
    ranks of one torchrun job all check at once, right after joining, and an exclusive one refused a rank whose
    peer's check held it at that moment (1 launch in about 150 at 4 ranks)."""
    if Path(out).is_dir():
        _release(_lock(Path(out), shared=True))


@contextmanager
def holding(out) -> Iterator[None]:
    """Hold the run folder's lock while training writes into it (``out`` exists)."""
    fd = _lock(Path(out))
    try:
        yield
    finally:
        _release(fd)


def _lock(folder: Path, shared: bool = False) -> int | None:
    """A descriptor holding the folder's lock (``shared``: only refused by a process training there), None where
    locks are not available; raises if another holds it."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise PolymodalError(f"another process is training into {folder} (a `polymodal train` still running there); "
                             "wait for it to finish or stop it, then run again with --resume (resume=True in "
                             "Python)") from None
    except OSError:  # a filesystem without flock
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the flock
