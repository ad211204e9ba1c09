"""Training metrics: one JSON line per record (always) and TensorBoard scalars (when tensorboard is installed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from polymodal.cache import atomic_write_bytes

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, out_dir: Path, tensorboard: bool = True, purge_after: int | None = None) -> None:
        """purge_after (on resume: the checkpoint's step): TensorBoard hides the events a killed session logged
        after it, as truncate_after drops them from metrics.jsonl."""
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if purge_after is None else purge_after + 1
                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=purge)
            except ImportError:
                log.info("tensorboard is not installed; metrics go to %s only (pip install tensorboard)", self.path)

    def truncate_after(self, step: int) -> None:
        """On resume: drop records written after the checkpoint, so the curve continues without duplicates."""
        if not self.path.is_file():
            return
        keep = [json.dumps(r) for r in _records(self.path) if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in keep).encode())

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(scalar_tag(record.get("split", "train"), key), value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def scalar_tag(split: str, key: str) -> str:
    """TensorBoard's name for a record's value: "train/loss" for a step's; an epoch's (split "val") validation
    metrics keep their own "val/rsum", and its training figures are "epoch/train_loss" (split + key made
    "val/val/rsum" and put the epoch's training loss and speed under val/). A step's per-objective values
    ("contrastive/loss", "itm/loss") stay under train/: only a key already under its split keeps its own name."""
    if key.startswith(f"{split}/"):
        return key
    return f"epoch/{key}" if split == "val" else f"{split}/{key}"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return _records(path) if path.is_file() else []


def _records(path: Path) -> list[dict]:
    """The file's records; a line cut short (the run was killed mid-write) is skipped with a warning, so --resume
    and `polymodal plot` still work."""
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        log.warning("%s: skipped %d unreadable line(s) (a run stopped mid-write?)", path, bad)
    return records
