"""A saved model folder: config.json (with its "type") beside model.safetensors, both written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def folder_type(path: str | Path) -> str | None:
    """The "type" a model folder's config.json names, or None for anything else."""
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text()).get("type")
    except (OSError, ValueError, AttributeError):
        return None


def read_folder_config(folder: Path, written_by: str) -> dict:
    """config.json as a dict, or one error naming what writes such folders."""
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise PolymodalError(f"cannot read {folder / CONFIG_FILE}; pass a folder written by {written_by}") from exc


def settings_from(folder: Path, raw: dict, kind: type):
    """A model folder's config.json (as read) -> its settings dataclass; a value of the wrong type (an edited or
    hand-written file) is one error naming the key and the file, not a TypeError as the model is built."""
    from polymodal.train.guards import check_types

    settings = kind.from_dict(raw)
    check_types(settings, f"in {Path(folder) / CONFIG_FILE}")
    return settings


def write_model_folder(folder: Path, weights: bytes, config: dict) -> Path:
    atomic_write_bytes(folder / WEIGHTS_FILE, weights)
    atomic_write_bytes(folder / CONFIG_FILE, json.dumps(config, indent=2).encode())
    return folder
