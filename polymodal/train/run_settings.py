"""RUN/train_config.json: the settings a run was trained with, kept so that `--out RUN --resume` continues it (from
any folder: data paths are stored absolute) and refuses another architecture before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError


def recipe_parts(cls, d: dict, label: str = "", train_defaults: dict | None = None,
                 list_keys: Sequence[str] = ()) -> tuple[Any, Any, dict]:
    """A recipe dict -> (its "arch" entry, its TrainConfig, the recipe's other keys). Train and architecture
    settings may sit under "train" / "arch" or at the top level (flags): defaults < "train" / "arch" < top level. A
    key the recipe has nowhere is one error listing the known ones; ``list_keys`` given as one string become a
    one-item list."""
    from polymodal.train.trainer import TrainConfig

    train_keys, arch_keys = set(TrainConfig.__dataclass_fields__), recipe_arch_keys(cls)
    arch = recipe_arch(cls, d)
    d = {k: v for k, v in d.items() if k != "arch" and k not in arch_keys
         and (k not in RUN_RECORD_KEYS or k in cls.__dataclass_fields__)}  # a run's train_config.json read back
    train = {**(train_defaults or {}), **d.pop("train", {}), **{k: d.pop(k) for k in list(d) if k in train_keys}}
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise PolymodalError(f"unknown {label}settings {sorted(unknown)}; known: "
                             f"{sorted(set(cls.__dataclass_fields__) | train_keys | arch_keys)}")
    for key in list_keys:
        if isinstance(d.get(key), str):
            d[key] = [d[key]]
    return arch, TrainConfig.from_dict(train), d


def recipe_arch(cls, d: dict) -> Any:
    """A recipe dict's architecture settings: its "arch" entry, with the architecture keys at its top level over it
    (as the train keys: "arch" < top level)."""
    arch, arch_keys = d.get("arch", {}), recipe_arch_keys(cls)
    flat_arch = {k: v for k, v in d.items() if k in arch_keys}
    if not flat_arch:
        return arch
    if not isinstance(arch, dict):
        raise PolymodalError(f"give {sorted(flat_arch)} inside arch, beside its other settings")
    return {**arch, **flat_arch}


def recipe_arch_keys(cls) -> set[str]:
    """The keys of a recipe's architecture settings ("arch"), which may also sit at the recipe's top level."""
    make = cls.__dataclass_fields__["arch"].default_factory
    return {f.name for f in fields(make())} - set(cls.__dataclass_fields__)


def absolute_source(source: str) -> str:
    """A data path as an absolute path; "a.tar::b.tar" names several shard sources."""
    return "::".join(os.path.abspath(os.path.expanduser(part)) for part in str(source).split("::"))


def absolute_paths(recipe, sources: Sequence[str] = (), names: Sequence[str] = ()) -> dict:
    """The recipe's paths made absolute: every entry of the ``sources`` lists, and each of ``names`` that names
    an existing file or folder (not a built-in name such as 'new' or 'default')."""
    out = {key: [absolute_source(p) for p in getattr(recipe, key)] for key in sources}
    from polymodal.registry import MODELS

    for key in names:
        value = getattr(recipe, key)
        if value in MODELS or value in ("new", "random"):  # names, even beside a folder called so (--out lite)
            continue
        if value and os.path.exists(os.path.expanduser(str(value))):
            out[key] = absolute_source(value)
    return out


# what the trainers write into train_config.json beside the recipe's settings: a record of the run (its data's counts,
# its validation set's hash, its processes), no setting, so a recipe read from that file (`--config
# RUN/train_config.json` to vary a run) leaves them out; the captioner's val_images is a setting of its own and stays
RUN_RECORD_KEYS = frozenset({"train_images", "val_images", "train_captions", "val_captions", "train_questions",
                             "val_questions", "images_per_batch", "world_size", "global_batch", "validation",
                             "zeroshot_validation"})


def write_train_config(out: Path, settings: dict) -> None:
    atomic_write_bytes(Path(out) / "train_config.json", json.dumps(settings, indent=2, default=str).encode())


RESUMED_RATES = ("lr", "tower_lr_scale", "weight_decay")  # the checkpoint's optimizer state brings these back
# settings no `polymodal train` command has a flag for (keys of --config only): a refusal names them as keys
CONFIG_ONLY_KEYS = frozenset({"decision_heads", "max_question_tokens", "mlm_head", "mrm_head", "logit_scale_init",
                              "lora_alpha", "name", "early_stop_metric", "warmup_cap", "warmup_fraction"})


def name_after_run(model, out) -> None:
    """A model trained under a built-in model's name (recipes/default.json names its arch "default"; the captioner's
    config and a continued `easy-vqa` or `captioner` keep theirs) is named after its run folder instead: indexes
    (name@version), /v1/info and errors would otherwise call the user's model by the built-in's name."""
    from dataclasses import replace

    from polymodal.registry import MODELS

    if getattr(getattr(model, "config", None), "name", None) in MODELS:
        name = Path(out).resolve().name
        model.config = replace(model.config, name=f"{name}-run" if name in MODELS else name)  # --out runs/default
        model.name = model.config.name


def check_same_run(out: Path, arch, train, ignore: Sequence[str] = (), freeze: Sequence[str] | None = None,
                   val_fraction: float | None = None, seed_draws_validation: bool = False,
                   flags: Collection[str] | None = None) -> None:
    """--resume (RUN/train_config.json): the checkpoint only fits the architecture it was trained with (``ignore``:
    arch keys that are no flag, checked when the checkpoint loads), and the optimizer and schedule continue at the
    rates they were saved with, so another --lr, --tower-lr-scale or --weight-decay would be recorded but not used:
    refuse both. ``val_fraction`` (None: the run validates on its own files, no split): another one would draw
    another validation split, partly of photos already trained on; so would another --seed where
    ``seed_draws_validation`` (a split, or pretraining's seeded negatives and masks): refused too. ``freeze``: the
    parts frozen now; the saved optimizer state holds the parameters trained then. ``flags``: the settings the
    command has a flag for (the refusal names the others as --config keys), when not every command's are."""
    saved = recorded_settings(out)
    if saved is None:
        return  # a run from before train_config.json: loading the checkpoint is the check
    if isinstance(saved, dict) and isinstance(saved.get("arch"), dict):
        from polymodal.models.fusion_encoder import as_recorded

        # a late run recorded before decision_heads trained its heads on the averaged decision (the CLI's --resume
        # reads it so; a recipe from Python takes the new default, which loads into the same tensor shapes)
        saved = {**saved, "arch": as_recorded(saved["arch"])}
    resumed = (*RESUMED_RATES, "seed") if seed_draws_validation else RESUMED_RATES
    changed = _changed(saved, "arch", arch, lambda k: k not in ignore) + _changed(saved, "train", train,
                                                                                lambda k: k in resumed)
    if val_fraction is not None and isinstance(saved, dict) and saved.get("val_fraction", val_fraction) != val_fraction:
        changed.append(("val_fraction", saved["val_fraction"], val_fraction))
    was_frozen = saved.get("freeze", []) if isinstance(saved, dict) else []
    if freeze is not None and isinstance(was_frozen, list) and sorted(was_frozen) != sorted(freeze):
        changed.append(("freeze", ",".join(was_frozen) or '""', ",".join(freeze) or '""'))
    if changed:
        raise another_run(out, changed, flags)


def check_same_fusion(out: Path, arch) -> None:
    """--resume asking for another --fusion, said before the model is built: the run's fusion options (a
    cross-attention's "query") would not fit the other fusion, and that error would hide this one."""
    changed = _changed(recorded_settings(out), "arch", arch, lambda k: k == "fusion")  # nothing recorded: nothing changed
    if changed:
        raise another_run(out, changed)


def check_same_answers(out: Path, answers: Sequence[str], because: Sequence[tuple] = ()) -> None:
    """--resume of a VQA run: its checkpoint's answer head scores the vocabulary it was trained over, in that order.
    Another one of the same size would load without a complaint and read every score under another answer.
    ``because``: (key, saved value, value now) of the settings that shape the vocabulary and differ from the run's
    (--min-answer-count, --max-answers): named as the cause when the vocabulary differs."""
    try:  # train_config.json records their count; the vocabulary is in the run's saved model
        was = json.loads((Path(out) / "model" / "config.json").read_text()).get("answers")
    except (OSError, ValueError, AttributeError):
        return  # no model saved yet (killed in its first epoch): a vocabulary of another size fails to load
    if not isinstance(was, list) or was == list(answers):
        return
    if because:
        raise another_run(out, list(because))
    differ = sorted(set(was) ^ set(answers), key=str)
    how = (f"{len(differ)} differ, e.g. {', '.join(map(repr, differ[:4]))}" if differ
           else "the same ones in another order")
    raise PolymodalError(f"the run in {out} trained its answer head over {len(was)} answers and this data gives "
                         f"{len(answers)} ({how}); the data changed, or this polymodal counts answers evaluation "
                         "scores as one ('yes!' and 'yes', 'two' and '2') as one class, which the run did not: resume "
                         "on the data and polymodal it trained with, or train into a new --out (another out in Python)")


def validation_record(pairs, rows: Sequence[tuple] | None = None, noun: str = "captions") -> dict | None:
    """What a run validated on, whatever file or split it came from: its photo and caption counts and a hash of the
    photos' file names with their texts (names, not paths: a data folder moved elsewhere is the same set).
    ``rows``: (image, text, ...) tuples to hash instead of a PairSet's pairs (VQA's questions and answers)."""
    if pairs is None and rows is None:
        return None
    rows = [(p.image, p.caption) for p in pairs.pairs] if rows is None else rows
    lines = sorted("\t".join([Path(str(image)).name, *map(str, texts)]) for image, *texts in rows)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return {"photos": len({str(r[0]) for r in rows}), noun: len(rows), "digest": digest}


def check_same_validation_set(out: Path, now: dict | None, key: str = "validation") -> None:
    """--resume: ``now`` (validation_record of this data) must be what the run recorded. The epoch kept is the best
    validation score so far, so the scores of the epochs to come must be taken on the same pairs. Another --val-pairs file (or the same file edited), or a --val-fraction split of changed
    --pairs, would compare them with a best score taken on other photos, some of them perhaps trained on since.
    ``key``: the record in train_config.json (zeroshot_validation: the labelled photos whose zero-shot top-1 chose)."""
    saved = recorded_settings(out)
    was = saved.get(key) if isinstance(saved, dict) else None
    if not isinstance(was, dict) or now is None or was.get("digest") == now["digest"]:
        return  # a run from before the record, or one without validation (a change there is refused elsewhere)
    raise PolymodalError(f"the run in {out} chose its best epoch on {_pairs_text(was)} and this data validates on "
                         f"other ones ({_pairs_text(now)}): resume on the data the run trained and validated "
                         "with, or train into a new --out (another out in Python; --model RUN/model starts from its "
                         "weights)")


def switched_validation(saved, key: str, now: Sequence[str]) -> list[tuple]:
    """[(key, was, now)] when a run that validated on files (``key``: val_pairs, val_qa) is resumed with its own
    split or on nothing instead, or the reverse: the photos that validated would train, or the scores compared would
    be of another kind (validation with the training loss). [] when it stays, or nothing was recorded."""
    was = saved.get(key) if isinstance(saved, dict) else None
    if not isinstance(was, list) or bool(was) == bool(now):
        return []
    split = "none: a --val-fraction split" if saved.get("val_fraction") else "none"
    return [(key, " ".join(was) or f"({split})", " ".join(now) or "(none)")]


def _pairs_text(record: dict) -> str:
    noun = next((k for k in record if k not in ("photos", "digest")), "captions")
    return f"{record.get(noun)} {noun} of {record.get('photos')} photos"


def recorded_settings(out: Path):
    """RUN/train_config.json as recorded, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(out) / "train_config.json").read_text())
    except (OSError, ValueError):
        return None


def another_run(out: Path, changed: list[tuple], flags: Collection[str] | None = None) -> PolymodalError:
    """``flags``: the settings the command has a flag for (`train captioner` has no --dropout, which `train vqa` has);
    None: every setting some command has a flag for."""
    config_key = (lambda k: k not in flags) if flags is not None else CONFIG_ONLY_KEYS.__contains__
    was = ", ".join(f'"{k}": {json.dumps(old)} (a --config key; asked now: {json.dumps(new)})' if config_key(k)
                    else f"--{k.replace('_', '-')} {_flag_value(old)} (asked now: {_flag_value(new)})"
                    for k, old, new in changed)
    # (a recipe built in Python is not filled from train_config.json: it states the run's values itself)
    return PolymodalError(f"the run in {out} was trained with {was}; resume with the run's settings (leave them "
                          f"out: --resume reads {Path(out) / 'train_config.json'}; in Python, a recipe with the "
                          "run's values), or train into a new --out")


def _changed(saved, section: str, settings, compared) -> list[tuple]:
    """(key, saved value, value now) of the compared keys of ``section`` that differ from the saved run's."""
    was = saved.get(section) if isinstance(saved, dict) else None
    if not isinstance(was, dict):
        return []
    now = json.loads(json.dumps(asdict(settings) if is_dataclass(settings) else dict(settings), default=str))
    return [(k, was[k], now[k]) for k in now if k in was and compared(k) and was[k] != now[k]]


def _flag_value(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)
