"""A saved model folder: config.json (with its "type") beside model.safetensors, both written atomically."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# a checkpoint file of another layout (OpenAI / open_clip state dicts, Hugging Face weights) that a folder may hold
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


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


def folder_version(folder: Path, raw: dict) -> str:
    """The saved model's version: the first 12 hex digits of its weights file's SHA-256, as every save() (and
    scripts/ship_model.py) writes it into config.json. The version names the model in its key (indexes and caches
    refuse vectors of another key), so weights that config.json was not written with (a model.safetensors copied from
    another model, a folder half rewritten) are one error rather than another model's vectors under this one's key;
    a config.json without a version (hand-written) gets its weights' own, not "unknown" shared by every such model."""
    try:
        found = hashlib.sha256((Path(folder) / WEIGHTS_FILE).read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise PolymodalError(f"cannot read {Path(folder) / WEIGHTS_FILE} ({exc}); the model folder is incomplete") from exc
    recorded = raw.get("version")
    if recorded is not None and str(recorded) != found:
        raise PolymodalError(f"{Path(folder) / WEIGHTS_FILE} is not the weights {Path(folder) / CONFIG_FILE} was saved "
                             f"with (its version is {recorded}, these weights' {found}): the folder mixes two models' "
                             "files or was half rewritten; copy or save the model folder again (weights you "
                             "changed on purpose: delete \"version\" from config.json, which then takes theirs)")
    return found


def config_from_dict(cls, d: dict, what: str):
    """A model's settings dataclass from config.json's keys (or a run's recorded arch): the keys every folder's
    config.json adds (type, version, transform) are passed over; another key the class lacks is one error, naming
    ``what`` model it is (settings_from reads its "unknown " start as a newer polymodal's key)."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known - {"type", "version", "transform"}
    if unknown:
        raise PolymodalError(f"unknown {what} config keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: v for k, v in d.items() if k in known})


def read_weights(folder: Path, load_file) -> dict:
    """folder/model.safetensors through ``load_file`` (safetensors.torch's or safetensors.numpy's), or one error."""
    from safetensors import SafetensorError

    try:
        return load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise PolymodalError(f"cannot read {folder / WEIGHTS_FILE} ({exc}); the model folder is incomplete") from exc


def settings_from(folder: Path, raw: dict, kind: type):
    """A model folder's config.json (as read) -> its settings dataclass; a value of the wrong type (an edited or
    hand-written file) is one error naming the key and the file, not a TypeError as the model is built."""
    from polymodal.train.guards import check_types

    try:
        settings = kind.from_dict(raw)
    except PolymodalError as exc:
        if not str(exc).startswith("unknown "):
            raise
        from polymodal import __version__  # keys this polymodal does not know: most likely a newer one saved it

        raise PolymodalError(f"{exc} (in {Path(folder) / CONFIG_FILE}: saved by a newer polymodal? this is "
                             f"{__version__}; upgrade polymodal to load it)") from None
    check_types(settings, f"in {Path(folder) / CONFIG_FILE}")
    return settings


def write_model_folder(folder: Path, weights: bytes, config: dict, loaded_from: Path | None = None) -> Path:
    """``loaded_from``: the folder the model was loaded from, whose training_photos.txt and trained_with.json go with
    it (a model loaded and saved again still learned from those photos: `eval` of the copy warns of them as of the
    original, and `info --model` of it says how it was trained)."""
    atomic_write_bytes(folder / WEIGHTS_FILE, weights)
    atomic_write_bytes(folder / CONFIG_FILE, json.dumps(config, indent=2).encode())
    if loaded_from is not None and Path(loaded_from).resolve() != Path(folder).resolve():
        from polymodal.training_photos import copy_training_records

        copy_training_records(Path(loaded_from), folder)
    return folder
