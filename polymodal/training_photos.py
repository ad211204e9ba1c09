"""Which photos a model learned from, kept beside its weights, so that an evaluation on some of them says its
figures are optimistic instead of printing them as if held out.

A model folder's training_photos.txt holds one 64-bit content hash (blake2b) per photo: renaming or moving a photo
does not hide it, and the file lists no paths. The run's validation photos follow as "val HASH" lines: they chose
the epoch kept, so figures on them are optimistic too (older readers see such a line as a hash that never matches).
A model trained from another one inherits that one's photos."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from polymodal.cache import atomic_write_bytes, staged_folder

log = logging.getLogger(__name__)

FILE_NAME = "training_photos.txt"
HEADER = "# content hashes (blake2b, 8 bytes) of the photos this model was trained on; eval warns of them\n"
VAL_HEADER = "# its validation photos (they chose the epoch kept): eval warns of them too\n"
VAL = "val "


def photo_hash(image, only_images: bool = False) -> str | None:
    """A photo's content hash: a file path, a tar shard's "<shard>#<member>" or encoded bytes; None when it cannot
    be read (with ``only_images``, also when its bytes are no image format Pillow knows: evaluation leaves it out)."""
    from polymodal.data.shards import read_tar_member, split_tar_ref

    if isinstance(image, (bytes, bytearray)):  # a shard's image, as eval retrieval reads it
        data = image
    else:
        try:
            split = split_tar_ref(image)
            data = read_tar_member(*split) if split else Path(image).read_bytes()
        except Exception:  # noqa: BLE001 - an unreadable photo is left out of the count, as evaluation leaves it out
            return None
    if only_images and not _is_image(data):
        return None
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _is_image(data: bytes) -> bool:
    """Whether Pillow knows the bytes' image format (their header only: no pixels decoded)."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:  # noqa: BLE001 - any failure to identify it is "not an image", as evaluation reads it
        return False


def photo_hashes(images) -> set[str]:
    return {h for h in map(photo_hash, images) if h is not None}


def image_hashes(images) -> list[str]:
    """The hashes of those of ``images`` that are images, one per photo (a path listed twice once; copies under
    other names each): the M of the warnings "N of the M evaluated/validation photos ...". A file that is no image
    is left out, as evaluation and validation leave it out as unreadable; a file damaged past its header counts."""
    paths = {str(image): image for image in images if not isinstance(image, (bytes, bytearray))}
    unique = [image for image in images if isinstance(image, (bytes, bytearray))] + list(paths.values())
    return [h for h in (photo_hash(image, only_images=True) for image in unique) if h is not None]


def copies_across(train_images, val_images) -> list[int]:
    """Indices of the val images that are training images: the same name, or the same bytes under another name (as
    scraped caption sets hold). Only files whose size, then first 64 KiB, match another's are hashed whole, so a set
    without copies costs a stat per file; shard members are compared by name only."""
    names = {str(image) for image in train_images}
    same_name = {i for i, image in enumerate(val_images) if str(image) in names}
    entries = [(0, i) for i in range(len(train_images))]
    entries += [(1, i) for i in range(len(val_images)) if i not in same_name]
    paths = [(train_images, val_images)[side][i] for side, i in entries]
    groups = _same_bytes(paths, lambda group: len({entries[j][0] for j in group}) == 2)  # both sides
    copies = {entries[j][1] for group in groups for j in group if entries[j][0] == 1}
    return sorted(same_name | copies)


def copies_within(images) -> list[list[int]]:
    """Groups (2+ indices) of ``images`` holding the same bytes under different names, compared as copies_across."""
    return _same_bytes(images, lambda group: len(group) > 1)


def _same_bytes(paths, wanted) -> list[list[int]]:
    """Groups of indices of ``paths`` with the same bytes for which ``wanted(group)``: by size, then the first 64 KiB,
    then the whole file, each pass hashing only the groups still wanted. Unreadable files and shard members are left
    out."""
    groups: dict = {}
    for i, path in enumerate(paths):
        try:
            groups.setdefault(os.stat(path).st_size, []).append(i)
        except (OSError, TypeError, ValueError):  # a shard member, or a file that is gone
            continue
    for key in (_head_hash, photo_hash):  # each pass splits the groups that are still wanted
        kept = [(found, group) for found, group in groups.items() if wanted(group)]
        groups = {}
        for found, group in kept:
            for i in group:
                digest = key(paths[i])
                if digest is not None:  # (unreadable: not compared)
                    groups.setdefault((found, digest), []).append(i)
    return [group for group in groups.values() if wanted(group)]


def _head_hash(image) -> str | None:
    try:
        with open(image, "rb") as f:
            return hashlib.blake2b(f.read(65536), digest_size=8).hexdigest()
    except OSError:
        return None


def model_folder(name_or_path) -> Path | None:
    """The folder of a built-in model name or a saved model path; None for `lite`, 'new' and the like."""
    from polymodal.registry import MODELS
    from polymodal.resources import HERE

    if isinstance(name_or_path, str) and name_or_path in MODELS:
        folder = HERE / "models" / name_or_path
    else:
        folder = Path(name_or_path).expanduser()  # as registry.load reads it: --model=~/runs/x/model loads that model
    return folder if folder.is_dir() else None


def _recorded(name_or_path) -> tuple[set[str], set[str]] | None:
    """(training, validation) hashes a model folder (or built-in name) records; None when it records none (trained
    before polymodal kept them, or an ONNX export made before exports copied the list)."""
    folder = model_folder(name_or_path)
    path = folder / FILE_NAME if folder else None
    if path is None or not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return ({h for h in lines if not h.startswith(VAL)}, {h[len(VAL):].strip() for h in lines if h.startswith(VAL)})


def read_training_photos(name_or_path) -> set[str] | None:
    """The hashes of the photos a model learned from; None when it records none."""
    recorded = _recorded(name_or_path)
    return None if recorded is None else recorded[0]


def read_validation_photos(name_or_path) -> set[str] | None:
    """The hashes of the photos that chose a model's epoch (none of them trained it); None when it records none."""
    recorded = _recorded(name_or_path)
    return None if recorded is None else recorded[1]


def write_training_photos(folder, hashes: set[str], val_hashes: set[str] = frozenset()) -> None:
    text = HEADER + "".join(h + "\n" for h in sorted(hashes))
    val = sorted(set(val_hashes) - set(hashes))  # a photo trained on is counted as that
    if val:
        text += VAL_HEADER + "".join(VAL + h + "\n" for h in val)
    atomic_write_bytes(Path(folder) / FILE_NAME, text.encode())


def copy_training_records(name_or_path, folder) -> None:
    """A model's list and its trained_with.json travel with what is made from it (an ONNX export, a copy saved from
    Python, a shipped copy): `eval` of that still warns, and `info --model` of it still says how it was trained."""
    from polymodal.trained_with import FILE_NAME as TRAINED_WITH

    src = model_folder(name_or_path)
    for name in (FILE_NAME, TRAINED_WITH):
        if src is not None and (src / name).is_file():
            atomic_write_bytes(Path(folder) / name, (src / name).read_bytes())


class TrainingPhotos:
    """Written beside each model a training run saves: the run's training photos plus those of the model it
    started from, and the validation photos that chose the epoch (``val_images``: pass none when no validation
    ran) plus the starting model's. ``earlier``: a resumed run's own RUN/model, whose list holds the photos its
    earlier sessions learned from (a resume on other data keeps what they taught). Hashed once, on the first save.
    ``settings``: the run's (train_config.json's), saved beside the model as its trained_with.json, with ``call``
    (trained_with.python_call()) as its command when the run was started from Python, and with the epoch each
    save keeps (``trainer``'s Trainer.kept(): `info --model` said nothing of it, and a run that kept its starting
    model looked trained)."""

    def __init__(self, images, start=None, val_images=(), earlier=None, settings: dict | None = None,
                 call: str | None = None, trainer=None) -> None:
        from polymodal.trained_with import trained_with

        self._images, self._val, self._hashes = list(images), list(val_images), None
        self._record = trained_with(settings, call) if settings is not None else None
        self._trainer = trainer
        # read now, before the run folder is prepared: --overwrite moves the run's RUN/model aside, and --model
        # may name that very folder (a run retrained in place from its own model)
        started = _recorded(start) if start is not None else None
        self._inherited = [r for r in (started, _recorded(earlier) if earlier is not None else None) if r is not None]
        if started is not None and self._val:
            self._warn_if_start_learned(start, started[0])

    def _warn_if_start_learned(self, start, learned: set[str]) -> None:
        """Validation photos the starting model learned from (``learned``: the built-in captioner learned all of
        Flickr8k-dev and COCO-mini) score it high before any epoch: its figure is optimistic, and RUN/model may stay
        that model ("no epoch beat the model training started from") with no reason given. Say so, with the count."""
        if not learned:
            return
        val = image_hashes(self._val)  # M counted as eval's warning counts it (count_seen_photos)
        seen = len(set(val) & learned)
        if seen:
            log.warning("%s of the %s validation photos are photos the model training starts from (--model %s) was "
                        "trained on: its score before training, and so the epoch kept, is optimistic (RUN/model may "
                        "stay that model); validate on photos it has not seen", f"{seen:,}", f"{len(val):,}", start)

    def hashes(self) -> tuple[set[str], set[str]]:
        """(training, validation) hashes."""
        if self._hashes is None:
            train, val = photo_hashes(self._images), photo_hashes(self._val)
            for recorded in self._inherited:
                train, val = train | recorded[0], val | recorded[1]
            self._hashes = (train, val)
        return self._hashes

    def save(self, model, folder) -> None:
        """Weights, config, this list and the run's record appear together: built in a hidden sibling folder, then
        renamed over ``folder`` (a kill between two files left new weights beside the old config's version)."""
        from polymodal.trained_with import write_trained_with

        hashes = self.hashes()  # first: ``earlier`` may be this folder
        with staged_folder(folder) as stage:
            model.save(stage)
            write_training_photos(stage, *hashes)
            if self._record is not None:
                kept = self._trainer.kept() if self._trainer is not None else None
                write_trained_with(stage, {**self._record, "kept": kept} if kept else self._record)

    def finish(self, model, folder) -> None:
        """At the run's end: without validation (or without ``trainer``), ``model`` (the last epoch's) saved to
        ``folder``; else the epoch kept, saved when it was the best, recorded again with the epochs the run trained
        (it said the --epochs of the session that saved it: an early stop trains fewer, a resume that keeps an
        older epoch more)."""
        from polymodal.trained_with import read_trained_with, write_trained_with

        if self._trainer is None or self._trainer.eval_fn is None:
            self.save(model, folder)
            return
        record, kept = read_trained_with(folder), self._trainer.kept()
        said = record.get("kept") if record is not None else None
        if kept is None or not isinstance(said, dict) or said.get("epoch") != kept["epoch"] or said == kept:
            return  # no record of this run's epoch (saved over, or before polymodal kept it), or nothing new
        write_trained_with(folder, {**record, "kept": kept})  # the same weights: the same version stamp


def _known(model) -> tuple[set[str], set[str]] | None:
    return _recorded(model) if isinstance(model, (str, Path)) else None  # a model object records none


def seen_flags(model, images) -> list[tuple[bool, bool]] | None:
    """For each image, (whether the model learned from it, whether it chose the model's epoch); None when the model
    records no training photos."""
    known = _known(model)
    if known is None:
        return None
    return [(h in known[0], h in known[1]) for h in map(photo_hash, images)]


def count_seen_photos(model, images) -> tuple[int, int] | None:
    """How many of the evaluated photos the model learned from, and how many of the others chose its epoch (its
    validation photos); None when it records no training photos. A warning for each kind found: those figures are
    not held-out ones. Copies of one photo count once."""
    known = _known(model)
    if known is None:
        return None
    # "N of the M evaluated photos": M leaves out the files that are no image, which evaluation leaves out as
    # unreadable (5 photos scored of 7 rows read "5 of the 7"); a file damaged past its header still counts
    found = image_hashes(images)
    hashes = set(found)
    seen, chose = len(hashes & known[0]), len(hashes & known[1])
    if seen:
        log.warning("%s of the %s evaluated photos %s photos the model %r was trained on: these figures are "
                    "optimistic; evaluate on photos it has not seen (--out marks each item's seen_in_training)",
                    f"{seen:,}", f"{len(found):,}", "is one of the" if seen == 1 else "are", model)
    if chose:
        log.warning("%s of the %s evaluated photos %s the validation photos that chose the epoch of %r (its run "
                    "kept the epoch that scored best on them): these figures are optimistic; evaluate on photos it has "
                    "not seen (--out marks each item's seen_in_validation)", f"{chose:,}", f"{len(found):,}",
                    "is one of" if chose == 1 else "are", model)
    return seen, chose
