"""Which photos a model learned from, kept beside its weights, so that an evaluation on some of them says its
figures are optimistic instead of printing them as if held out.

A model folder's training_photos.txt holds one 64-bit content hash (blake2b) per photo: renaming or moving a photo
does not hide it, and the file lists no paths. A model trained from another one inherits that one's photos."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from polymodal.cache import atomic_write_bytes

log = logging.getLogger(__name__)

FILE_NAME = "training_photos.txt"
HEADER = "# content hashes (blake2b, 8 bytes) of the photos this model was trained on; eval warns of them\n"


def photo_hash(image) -> str | None:
    """A photo's content hash: a file path, a tar shard's "<shard>#<member>" or encoded bytes; None when it cannot
    be read."""
    from polymodal.data.shards import read_tar_member, split_tar_ref

    if isinstance(image, (bytes, bytearray)):  # a shard's image, as eval retrieval reads it
        data = image
    else:
        try:
            split = split_tar_ref(image)
            data = read_tar_member(*split) if split else Path(image).read_bytes()
        except Exception:  # noqa: BLE001 - an unreadable photo is left out of the count, as evaluation leaves it out
            return None
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def photo_hashes(images) -> set[str]:
    return {h for h in map(photo_hash, images) if h is not None}


def model_folder(name_or_path) -> Path | None:
    """The folder of a built-in model name or a saved model path; None for `lite`, 'new' and the like."""
    from polymodal.registry import MODELS
    from polymodal.resources import HERE

    if isinstance(name_or_path, str) and name_or_path in MODELS:
        folder = HERE / "models" / name_or_path
    else:
        folder = Path(name_or_path)
    return folder if folder.is_dir() else None


def read_training_photos(name_or_path) -> set[str] | None:
    """The hashes a model folder (or built-in name) records; None when it records none (trained before polymodal
    kept them, or an ONNX export)."""
    folder = model_folder(name_or_path)
    path = folder / FILE_NAME if folder else None
    if path is None or not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def write_training_photos(folder, hashes: set[str]) -> None:
    atomic_write_bytes(Path(folder) / FILE_NAME, (HEADER + "".join(h + "\n" for h in sorted(hashes))).encode())


def copy_training_photos(name_or_path, folder) -> None:
    """A model's list travels with what is made from it (an ONNX export, a shipped copy): `eval` of that still warns."""
    src = model_folder(name_or_path)
    if src is not None and (src / FILE_NAME).is_file():
        atomic_write_bytes(Path(folder) / FILE_NAME, (src / FILE_NAME).read_bytes())


class TrainingPhotos:
    """Written beside each model a training run saves: the run's training photos plus those of the model it
    started from. Hashed once, on the first save."""

    def __init__(self, images, start=None) -> None:
        self._images, self._start, self._hashes = list(images), start, None

    def hashes(self) -> set[str]:
        if self._hashes is None:
            inherited = read_training_photos(self._start) if self._start is not None else None
            self._hashes = photo_hashes(self._images) | (inherited or set())
        return self._hashes

    def save(self, model, folder) -> None:
        model.save(folder)
        write_training_photos(folder, self.hashes())


def _known(model) -> set[str] | None:
    return read_training_photos(model) if isinstance(model, (str, Path)) else None  # a model object records none


def seen_flags(model, images) -> list[bool] | None:
    """For each image, whether the model learned from it; None when the model records no training photos."""
    known = _known(model)
    return None if known is None else [photo_hash(image) in known for image in images]


def count_training_photos(model, images, what: str = "photos") -> int | None:
    """How many of the evaluated photos the model learned from (None: it records no training photos), with a
    warning when any did: those figures are not held-out ones. Copies of one photo count once."""
    known = _known(model)
    if known is None:
        return None
    images = list(images)
    seen = len(photo_hashes(images) & known)
    if seen:
        log.warning("%s of the %s evaluated %s %s photos the model %r was trained on: these figures are optimistic; "
                    "evaluate on photos it has not seen (--out marks each item's seen_in_training)", f"{seen:,}",
                    f"{len(images):,}", what, "is one of the" if seen == 1 else "are", model)
    return seen
