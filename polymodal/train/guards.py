"""Checks a training run makes before it computes or writes anything: the settings' types and ranges, and what the
run folder already holds (nothing, a checkpoint to --resume, or an old run to --overwrite)."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import shutil
import typing
from pathlib import Path

from polymodal.cache import check_creatable, remove_stale_temps
from polymodal.errors import PolymodalError
from polymodal.train.run_lock import refuse_if_busy

log = logging.getLogger(__name__)

# What a run writes into its folder; all but curves.png (from `polymodal plot`) mark the folder as holding a run.
RUN_FILES = ("checkpoint.pt", "model", "metrics.jsonl", "tensorboard", "train_config.json", "curves.png")
# A run that diverged (a NaN loss, NaN answers): the advice it stops with. --resume refuses another --lr (the
# checkpoint's optimizer state brings the old one back), and the same command again meets the run it left.
LOWER_LR = ("train again with a lower --lr and --overwrite, or into a new --out (--resume keeps the run's --lr; "
            "train.lr with overwrite=True or another out in Python)")
# Keeps the layers under a head (and so its outputs) as they are: the advice when a run moves them but not the head.
FREEZE_UNDER_HEADS = "--freeze projections,fusion (freeze=['projections', 'fusion'] in Python)"

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
               list: "a list"}

# (what a value must be, test); NaN fails every comparison, so it is refused too
AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
AT_LEAST_2 = ("at least 2", lambda v: v >= 2)  # e.g. answers to choose among
POSITIVE = ("above 0", lambda v: v > 0)
NON_NEGATIVE = ("0 or more", lambda v: v >= 0)
NONE_OR_NON_NEGATIVE = ("0 or more (or unset)", lambda v: v is None or v >= 0)
FRACTION = ("in [0, 1)", lambda v: 0 <= v < 1)
# AdamW moves each weight by about lr a step (usual: 1e-5 to 1e-2): far above 10 every run diverges, and from ~3e37
# Adam's bias-corrected step overflows float32 (a RuntimeError traceback, not a line)
LEARNING_RATE = ("above 0 and at most 10", lambda v: 0 < v <= 10)


def _matches(value, kind) -> bool:
    args = typing.get_args(kind)
    if type(None) in args:  # `int | None`: None (the default's "automatic"), or a value of the other type
        return value is None or _matches(value, next(a for a in args if a is not type(None)))
    kind = typing.get_origin(kind) or kind
    if kind is bool or kind is dict:
        return isinstance(value, kind)
    if isinstance(value, bool):  # JSON true is no number
        return False
    if kind is int:  # numbers.*: numpy scalars from a sweep (np.arange) are numbers too
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    if kind is str:
        return isinstance(value, (str, os.PathLike))
    if kind in (list, tuple):
        return isinstance(value, (list, tuple))
    return True


def check_types(settings, where: str = "in the recipe, or the --config file on the command line") -> None:
    """Settings from a config file arrive untyped: a wrong type is one line naming the key, not a TypeError deep
    inside training. Nested settings (arch, train) are checked too. ``where``: where the user fixes the value."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value, kind = getattr(settings, f.name), hints[f.name]
        if dataclasses.is_dataclass(kind):
            check_types(value, where)
        elif not _matches(value, kind):
            want = _TYPE_NAMES.get(typing.get_origin(kind) or kind, str(kind))
            raise PolymodalError(f"setting {f.name} must be {want}, got {value!r}; fix {f.name} ({where})")


def check_ranges(settings, rules: dict) -> None:
    """rules: {field: (what it must be, test)}, e.g. {"epochs": AT_LEAST_1}."""
    for name, (want, ok) in rules.items():
        value = getattr(settings, name)
        finite = not isinstance(value, numbers.Real) or math.isfinite(value)  # --lr inf would train to NaN
        if not finite or not ok(value):
            # the same check serves Python recipes and the CLI: name the setting, then its flag
            want += "" if finite else " and finite"
            raise PolymodalError(f"{name} must be {want}, got {value!r}; fix {name} (--{name.replace('_', '-')} "
                                 "or the --config file on the command line)")


def warn_of_shared_photos(train_images, val_images, flag: str) -> None:
    """Validation photos that training also sees (the same file passed twice, or a copy under another name) make
    the validation metrics, and so the epoch kept, optimistic: say so, with the count."""
    from polymodal.training_photos import copies_across

    val = list(dict.fromkeys(str(p) for p in val_images))
    shared = copies_across(list(dict.fromkeys(str(p) for p in train_images)), val)  # a renamed copy counts too
    if shared:
        log.warning("%d of the %d validation photos (%s) are training photos too: validation metrics and the epoch kept "
                    "are optimistic; validate on photos training does not see", len(shared), len(val), flag)


def check_run_folder(out, resume: bool, overwrite: bool, epochs: int | None = None, patience: int = 0) -> None:
    """Refuse to mix two runs in one folder: a folder holding a run needs --resume or --overwrite. With ``epochs``,
    a run to resume that is damaged, already trained that many epochs or stopped early (``patience``) is refused
    too (trainer.check_resumable).

    Messages name the CLI flag and, in brackets, the keyword the Python functions take (resume=, overwrite=)."""
    out = Path(out)
    if resume and overwrite:
        raise PolymodalError(f"pass --resume (resume=True in Python) to continue the run in {out} or --overwrite "
                             "(overwrite=True in Python) to replace it, not both")
    if out.exists() and not out.is_dir():
        raise PolymodalError(f"--out {out} is a file; pass a folder for the run (the recipe's out)")
    check_creatable(out, f"--out {out}")
    refuse_if_busy(out)  # a run still going there: --resume and --overwrite would write over it as it trains
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():  # RUN/model given as --out
        raise PolymodalError(f"--out {out} holds a saved model, not a run; pass a new folder for the run (a model to "
                             "start from goes in --model, the recipe's model in Python)")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            if (out / REPLACED_RUN / "checkpoint.pt").is_file():  # an --overwrite killed (SIGKILL) before its epoch 1
                raise PolymodalError(f"no checkpoint at {out / 'checkpoint.pt'}: an --overwrite of this run was killed "
                                     "before its first epoch finished, and the run it was replacing is kept in "
                                     f"{out / REPLACED_RUN}; run the --overwrite command again to replace it, or move "
                                     f"that folder's files back into {out} (over the new run's) to resume it")
            if any((out / name).exists() for name in RUN_FILES[1:-1]):  # killed (SIGKILL, out of memory) early
                raise PolymodalError(f"no checkpoint at {out / 'checkpoint.pt'}: the run there has none to continue "
                                     "from (it was killed before its first epoch finished, or the file was deleted); "
                                     "start it again with --overwrite (overwrite=True in Python), which replaces it")
            raise PolymodalError(f"no checkpoint at {out / 'checkpoint.pt'}; train without --resume "
                                 "(resume=True in Python) first")
        if epochs is not None:
            from polymodal.train.trainer import check_resumable

            check_resumable(out, epochs, patience)
    elif not overwrite and any((out / name).exists() for name in RUN_FILES[:-1]):
        raise PolymodalError(f"{out} already holds a training run; pass --resume (resume=True in Python) to continue it, "
                             "--overwrite (overwrite=True in Python) to replace it, or choose another --out")


# Where --overwrite moves the old run until the new one has saved its first epoch: a new run that fails or is
# interrupted before that puts the old run back instead of leaving an empty folder.
REPLACED_RUN = ".replaced-run"


def prepare_run_folder(out, overwrite: bool) -> Path:
    """Create the run folder just before the first write (this late, so that a mistake found while reading the data
    changes nothing); with overwrite, move the old run's files aside into REPLACED_RUN, from where
    discard_unfinished_run puts them back and forget_replaced_run deletes them once the new run saved an epoch."""
    out = Path(out)
    if overwrite:
        stash = out / REPLACED_RUN
        if stash.is_dir() and not (out / "checkpoint.pt").is_file():
            # an earlier replacement was killed before its first epoch: the stash still holds the run to replace
            _remove_run_files(out, RUN_FILES)
        else:
            _remove_run_files(out, (REPLACED_RUN,))
            names = [n for n in RUN_FILES if (out / n).exists() or (out / n).is_symlink()]
            if names:
                stash.mkdir()
                for name in names:  # a rename moves a symlink itself, never what it points to
                    os.replace(out / name, stash / name)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _remove_run_files(out: Path, names, quiet: bool = False) -> None:
    """Delete these run files and folders in `out` (a symlink itself, never what it points to); `quiet`: ignore a
    failure (cleaning up after an error must not hide that error)."""
    for path in (out / name for name in names):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        except OSError:
            if not quiet:
                raise


def remove_killed_writes(out) -> None:
    """Delete the hidden temporary files (atomic_write_bytes') of run files whose write a kill cut short (SIGKILL,
    the out-of-memory killer, a scheduler's kill at the time limit): checkpoint.pt's is as large as the checkpoint,
    and each such kill left one that nothing removed. Called holding the run folder's lock: no other training
    process writes there, so every one of them is dead, whatever its age."""
    remove_stale_temps(out, ("checkpoint.pt", "metrics.jsonl", "train_config.json"), older_than_s=0)


def forget_replaced_run(out) -> None:
    """The new run saved an epoch: the run it replaces (moved aside by prepare_run_folder) goes for good."""
    _remove_run_files(Path(out), (REPLACED_RUN,), quiet=True)


def discard_unfinished_run(out) -> bool:
    """A fresh run that fails before its first checkpoint (a settings combination that breaks the first step, a NaN
    loss, Ctrl-C in epoch 1) leaves nothing to resume: remove what it wrote, so that running again needs no
    --overwrite, and put back the run it was to replace, if any (returns whether it did). Files that are not a
    run's, and the folder itself, are left alone."""
    out = Path(out)
    stash = out / REPLACED_RUN
    _remove_run_files(out, RUN_FILES[:-1], quiet=True)  # curves.png is `polymodal plot`'s, not a run's
    if not stash.is_dir():
        return False
    try:
        for path in stash.iterdir():
            os.replace(path, out / path.name)
        stash.rmdir()
    except OSError:  # cleaning up after an error must not hide that error; the stash stays for the user
        return False
    return True


def refuse_unfreezing(train) -> None:
    """Progressive unfreezing opens blocks of the dual encoder's image tower; the fusion encoder and the captioner
    train over cached tower features, so there is nothing for it to open: say so instead of failing mid-run."""
    if train.unfreeze_every:
        raise PolymodalError("unfreeze_every (progressive unfreezing) opens image-tower blocks of a contrastive dual "
                             "encoder; this model trains over cached, frozen image-tower features: leave it 0")


def refuse_lone_val_split(recipe, val_key: str = "val_pairs") -> None:
    """--val-split filters the validation file's rows; without one (``val_key``: val_pairs, val_qa) nothing reads
    it, and the run validated on a --val-fraction split of the training rows instead, without a word."""
    if recipe.val_split and not getattr(recipe, val_key):
        flag = "--" + val_key.replace("_", "-")
        raise PolymodalError(f"--val-split {recipe.val_split} keeps those rows of {flag}, and no {flag} is given; "
                             f"pass {flag} FILE (the --{val_key[4:]} file again, for its rows of that split), or "
                             f"leave --val-split out ({val_key}, val_split in Python)")


def freeze_parts(model, parts, model_name: str) -> None:
    """Stop training ``parts`` of a fusion encoder (`FusionEncoder.freeze` checks the names)."""
    if not parts:
        return
    if model_name == "new":
        log.warning("freezing %s of a new model keeps those parts at their random start; to keep trained parts, "
                    "pass --model FOLDER (a trained or pretrained fusion encoder; model= in Python)", ", ".join(parts))
    frozen = model.freeze(parts)
    log.info("frozen: %d parameter tensors (%s)", len(frozen), ", ".join(parts))


def save_without_untrained_itm(save, model, epoch: int) -> None:
    """save(model), except that the model as it came (epoch 0, kept when no epoch beats it) is saved without the ITM
    head this run added and has not trained (model.fresh_itm_head): a random head would score multiple-choice
    candidates outside the answer vocabulary."""
    if epoch != 0 or not getattr(model, "fresh_itm_head", False):
        save(model)
        return
    itm, model.itm, model.config.itm_head = model.itm, None, False
    try:
        save(model)
    finally:
        model.itm, model.config.itm_head = itm, True
