"""`polymodal train ...`, `polymodal eval ...`, `polymodal plot ...`: thin wrappers over polymodal.train / eval."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from polymodal.apps.templates import add_template_options
from polymodal.cli_options import (CONFIG_HELP, add_eval_options, add_recipe_flags, add_run_options, how_it_ran,
                                   load_model)
from polymodal.errors import PolymodalError

# flag -> (recipe section, key, type); a config file uses the same keys (section "arch" for architecture)
TRAIN_FLAGS = {
    "epochs": ("train", int), "lr": ("train", float), "tower_lr_scale": ("train", float), "weight_decay": ("train", float),
    "warmup_steps": ("train", int), "grad_clip": ("train", float), "seed": ("train", int),
    "patience": ("train", int), "unfreeze_every": ("train", int), "log_every": ("train", int),
    "embed_dim": ("arch", int), "image_features": ("arch", str), "image_head": ("arch", str),
    "text_head": ("arch", str), "head_dropout": ("arch", float), "image_trainable_blocks": ("arch", int), "text_trainable_layers": ("arch", int),
    "batch_size": ("", int), "gradcache_chunk": ("", int), "views": ("", int), "val_fraction": ("", float),
    "workers": ("", int), "zeroshot_labels": ("", str), "hard_negatives": ("", str), "split": ("", str),
    "val_split": ("", str),
}
ARCH_KEYS = ("fusion_options", "pixel_patches", "itm_head")  # architecture flags outside the flag tables
# --help for the settings whose values or interplay `--help` would otherwise not say (docs/ does); each
# text names its default with %(recipe_default)s, the recipe's own value
CONTRASTIVE_HELPS = {
    # a seed sweep varies these draws too, not only the shared help's
    "seed": "seed of the initial weights, the data order, dropout, the validation split, the --views augmentations "
            "and the --hard-negatives swap copies (default: %(recipe_default)s)",
    "embed_dim": "dimension of the joint space the heads project both towers into",
    "head_dropout": "dropout inside the mlp and residual heads",
    "batch_size": "image-caption pairs per step, per process under torchrun (the other pairs, of every process, "
                  "are each pair's negatives)",
    "hard_negatives": "hard-negative captions: data (the rows' own \"negatives\", when they have some), swap (also, "
                      "for each caption without its own, two copies with two content words swapped) or none (default: "
                      "%(recipe_default)s)",
    "image_features": "pooled (one vector per photo) or spatial (the 7x7 grid, for --image-head attention) "
                      "(default: %(recipe_default)s)",
    "image_head": "linear, mlp, attention (needs --image-features spatial), residual or conse_residual (default: "
                  "%(recipe_default)s)",
    "text_head": "linear, mlp or residual (default: %(recipe_default)s)",
    "image_trainable_blocks": "train the last N EfficientNet blocks too (the trunk before them is cached) (default: "
                              "%(recipe_default)s)",
    "text_trainable_layers": "train the last N MiniLM layers too (default: %(recipe_default)s)",
    "tower_lr_scale": "unfrozen tower layers learn at this x --lr (default: %(recipe_default)s)",
    "unfreeze_every": "progressive unfreezing: one more image block every E epochs from epoch E+1, up to "
                      "--image-trainable-blocks N, which it needs (and --epochs N*E+1 or more); 0 = all N from the "
                      "start (default: %(recipe_default)s)",
    "warmup_steps": "linear warmup steps before the cosine decay; unset: 50, but at most a tenth of the run "
                    "(default: %(recipe_default)s)",
    "patience": "stop after this many epochs without a better validation score (training loss when nothing "
                "validates); 0 = never (default: %(recipe_default)s)",
    "gradcache_chunk": "GradCache chunk size: large contrastive batches in little memory; 0 = off (default: "
                       "%(recipe_default)s)",
    "views": "views cached per photo, the centre crop and N-1 augmented ones (each epoch draws one); 1 = the centre "
             "crop only (default: %(recipe_default)s)",
    "val_fraction": "share of the photos split off for validation when --val-pairs is not given (default: "
                    "%(recipe_default)s)",
    "zeroshot_labels": "a JSONL of {\"image\", \"label\"} rows (or an image,label CSV, or a folder of class "
                       "folders) scored zero-shot after each epoch (the early-stopping metric when there are no "
                       "validation pairs) (default: %(recipe_default)s)",
}


def shipped_recipes() -> dict[str, Path]:
    """The recipes polymodal installs with itself (in the wheel, so `--config default` works outside a clone)."""
    from polymodal.resources import HERE

    return {p.stem: p for p in (HERE / "recipes").glob("*.json")}


def _recipe_path(path: str) -> Path:
    """--config's file: a path, or the name of a recipe polymodal ships (when no such file exists here)."""
    p, shipped = Path(path).expanduser(), shipped_recipes()
    return shipped[path] if path in shipped and not p.exists() else p


def _read_config(path: str) -> dict:
    p = _recipe_path(path)
    try:
        if p.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
                import tomli as tomllib

            return tomllib.loads(p.read_text())
        return json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise PolymodalError(f"config file not found: {p} (the recipes polymodal ships are named: "
                             f"{', '.join(sorted(shipped_recipes()))})") from exc
    except ValueError as exc:
        raise PolymodalError(f"cannot parse config {p} ({exc}); use JSON or TOML with the flag names as keys") from exc


def recipe_settings(args, paths: tuple[str, ...], flags: dict) -> dict:
    """The recipe a `train` command runs: --config (JSON/TOML) first, then the given path arguments and every flag
    the user set (flags: name -> (section, type); section "train", "arch" or "" for the recipe itself). The config
    takes the flags' keys (batch_size or batch-size) at its top level, or in "arch" / "train" sections."""
    config = _read_config(args.config) if args.config else {}
    if not isinstance(config, dict):
        raise PolymodalError(f"config {args.config} must hold settings by name, e.g. {{\"epochs\": 5}}")
    settings: dict = {"arch": {}, "train": {}}
    given: dict = {}  # (section, key) -> how the file spelled it: a setting given twice must agree

    def put(section: str, key: str, value, spelled: str) -> None:
        where = settings[section] if section else settings
        if (section, key) in given and where[key] != value:
            raise PolymodalError(f"config {args.config} sets {key} twice, {where[key]!r} as {given[section, key]} and "
                                 f"{value!r} as {spelled}; keep one")
        given[section, key], where[key] = spelled, value

    for key, value in config.items():
        spelled, key = key, key.replace("-", "_")
        if key in ("arch", "train"):
            if not isinstance(value, dict):
                raise PolymodalError(f"{key} in config {args.config} must be a table of settings, got {value!r}")
            for k, v in value.items():  # embed-dim = embed_dim
                put(key, str(k).replace("-", "_"), v, f"{key}.{k}")
        elif key in ("resume", "overwrite"):  # a file that always deletes or resumes is a trap: only by flag
            raise PolymodalError(f"{key} in config {args.config} is not taken; pass --{key} on the command line")
        elif key == "quiet":  # steers the command, not the recipe
            if not isinstance(value, bool):
                raise PolymodalError(f"{key} in config {args.config} must be true or false, got {value!r}")
            setattr(args, key, getattr(args, key, False) or value)
        else:
            put("arch" if key in ARCH_KEYS else flags.get(key, ("",))[0], key, value, spelled)
    for key in paths:
        if getattr(args, key):
            settings[key] = getattr(args, key)
    for key, (section, _) in flags.items():
        value = getattr(args, key)
        if value is not None:
            (settings[section] if section else settings)[key] = value
    fusion_options = getattr(args, "fusion_options", None)
    if fusion_options:
        try:
            settings["arch"]["fusion_options"] = json.loads(fusion_options)
        except ValueError as exc:
            raise PolymodalError(f"--fusion-options must be a JSON object, e.g. '{{\"layers\": 2}}' ({exc})") from exc
    if getattr(args, "pixel_patches", False):
        settings["arch"]["pixel_patches"] = True
    return settings


def run_recipe(args, settings: dict, data: str, recipe_cls, train) -> int:
    """Check that the recipe names its data (`data`: 'pairs' or 'qa') and run folder, train, print one JSON line.
    The trainer checks the settings and the run folder (--resume / --overwrite) before it writes anything."""
    from polymodal.train import distributed
    from polymodal.train.guards import LOWER_LR

    if not settings.get(data) or not settings.get("out"):
        raise PolymodalError(f"pass --{data} FILE and --out RUN_DIR (or put them in --config)")
    if not args.resume:
        check_arch_of_continued_model(settings, recipe_cls)
    result = train(recipe_cls.from_dict(settings), resume=args.resume, progress=not args.quiet,
                   overwrite=args.overwrite)
    if not distributed.is_main():  # under torchrun every rank trains; rank 0 reports
        return 0
    model = Path(settings["out"]) / "model"
    line = {"out": settings["out"], "model": str(model) if model.is_dir() else None}
    if "epoch" in result:  # the best epoch's record
        line["best"] = result
    else:
        note = ("no epoch of this session improved the validation metric; the model from before the resume is kept"
                if args.resume and model.is_dir() else
                f"no epoch improved the validation metric (a NaN loss?): {LOWER_LR}")
        line |= {"best": None, "note": note, **result}
    print(json.dumps(line))
    return 0


# architecture settings that still apply to a model trained further (VQA's ITM head), and the name: no architecture
# (recipes/default.json names its arch "default", while the model it trained took its run folder's name)
CONTINUED_ARCH_KEYS = {"itm_head", "name"}


def check_arch_of_continued_model(settings: dict, recipe_cls=None) -> None:
    """A model continued from a folder (--model) keeps its own architecture: an architecture setting that differs
    from it would be silently ignored (and recorded in train_config.json as if used), so it is refused. With
    ``recipe_cls``, architecture keys at the settings' top level count too (the recipe reads them as "arch")."""
    from polymodal.resources import HERE
    from polymodal.train.run_settings import recipe_arch

    name = settings.get("model")
    if not isinstance(name, str) or name in ("new", "lite"):  # (a number: the recipe's type check says so)
        return
    folder = HERE / "models" / name if (HERE / "models" / name).is_dir() else Path(name)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # not a model folder: the trainer says what --model takes
    if isinstance(config, dict) and config.get("type") == "fusion_encoder":
        from polymodal.models.fusion_encoder import as_recorded

        config = {**as_recorded(config), **getattr(recipe_cls, "CONTINUED_ARCH", {})}  # as load_fusion_encoder
        # reads it, and as the trainer continues it (VQA drops the pretraining heads)
    # a --config key without a flag (logit_scale_init, decision_heads) may sit at the top level: the recipe folds
    # it into "arch", so it would be ignored just the same
    arch = recipe_arch(recipe_cls, settings) if recipe_cls else settings.get("arch", {})
    differ = sorted(k for k, v in arch.items() if k not in CONTINUED_ARCH_KEYS and k in config and config[k] != v)
    if differ:
        given = ", ".join(f"{k} {arch[k]!r}" for k in differ)
        has = ", ".join(f"{k} {config[k]!r}" for k in differ)
        raise PolymodalError(f"--model {name} keeps its own architecture ({has}), so {given} (flags or --config) "
                             "would be ignored; drop them, or train a new model without --model")


def run_pairs_recipe(args, flags: dict, recipe_cls, train) -> int:
    """A `train` task on image-caption pairs (contrastive, pretrain, captioner): --config and flags, the run's own
    settings on --resume, then run_recipe."""
    settings = recipe_settings(args, ("pairs", "val_pairs", "out", "model"), flags)
    if args.resume:
        settings = with_run_settings(settings, recipe_cls, args.overwrite)  # (with --overwrite: "not both")
    return run_recipe(args, settings, "pairs", recipe_cls, train)


def cmd_train_contrastive(args) -> int:
    from polymodal.train.contrastive import ContrastiveRecipe, train_contrastive

    return run_pairs_recipe(args, TRAIN_FLAGS, ContrastiveRecipe, train_contrastive)


def with_run_settings(settings: dict, recipe_cls, overwrite: bool = False) -> dict:
    """--resume: what the command does not set again comes from RUN/train_config.json, so that
    `--out RUN --resume` continues the run as it was started (flags and --config still override). A run another
    `train` command started is refused here, before its settings read as unknown keys of this one."""
    import dataclasses
    import typing

    path = Path(settings["out"]) / "train_config.json" if settings.get("out") else None
    if path is None or not path.is_file():
        out = Path(settings["out"]) if settings.get("out") else None
        if out is not None and not (out / "checkpoint.pt").is_file() and not overwrite:  # a mistyped --out
            what = "does not exist" if not out.exists() else "holds no run (no train_config.json)"
            raise PolymodalError(f"--out {out} {what}: no checkpoint to resume; check the path, or start a run there "
                                 "without --resume")
        return settings  # the trainer says what is missing
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise PolymodalError(f"cannot read {path} ({exc}); pass the run's settings again with --resume") from exc
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k, {}), dict) for k in ("arch", "train")):
        raise PolymodalError(f"{path} does not hold a run's settings (an object with arch and train objects); pass "
                             "the run's settings again with --resume")
    known = {f.name for f in dataclasses.fields(recipe_cls)}
    arch = {f.name for f in dataclasses.fields(typing.get_type_hints(recipe_cls)["arch"])}
    foreign = [k for k in ("pairs", "qa") if k in saved and k not in known] + sorted(set(saved.get("arch", {})) - arch)
    if foreign:
        raise PolymodalError(f"{settings['out']} holds a run that another `polymodal train` command started (its "
                             f"settings include {', '.join(foreign[:3])}); continue it with that command and --resume")
    model, was = settings.get("model"), saved.get("model")
    if isinstance(model, str) and isinstance(was, str) and _other_model(model, was):
        # the checkpoint's weights continue whatever --model says: only the record would change (train_config.json
        # naming it, RUN/model's training_photos.txt inheriting its photos)
        raise PolymodalError(f"the run in {settings['out']} was trained with --model {was} (asked now: {model}); the "
                             "checkpoint continues the model it started from: drop --model, or start another run")
    for key in ("pairs", "qa"):  # other data is allowed (more data, a fixed file), but it is another curve
        if settings.get(key) and saved.get(key) and _resolved(settings[key]) != _resolved(saved[key]):
            logging.getLogger(__name__).warning(
                "--resume with other %s than the run started with (%s); its epochs so far trained on %s", key,
                ", ".join(map(str, _listed(settings[key]))), ", ".join(map(str, _listed(saved[key]))))
    from polymodal.data.jsonl import split_names

    if "split" in settings and split_names(settings["split"]) != split_names(saved.get("split")):  # as above
        logging.getLogger(__name__).warning(
            "--resume with --split %s; the run's epochs so far trained on %s", settings["split"] or '""',
            f"its rows of split {saved['split']}" if saved.get("split") else "every split of its data")
    recorded = {section: saved.get(section, {}) for section in ("arch", "train")}
    if "decision_heads" in arch:  # a late-fusion run started before decision_heads resumes as its checkpoint trained
        from polymodal.models.fusion_encoder import as_recorded

        recorded["arch"] = as_recorded(recorded["arch"])
    merged = {k: v for k, v in saved.items() if k in known} | settings
    for section in ("arch", "train"):
        merged[section] = {**recorded[section], **settings[section]}
    return merged


def _model_named(model: str) -> str:
    """--model as train_config.json records it: an existing folder or file as an absolute path, a name as given."""
    from polymodal.train.run_settings import absolute_paths

    return absolute_paths(argparse.Namespace(model=model), (), ("model",)).get("model", model)


def _other_model(model: str, was: str) -> bool:
    """Whether --model ``model`` names another model than the run recorded (``was``). A recorded folder that is
    gone (moved or renamed since) cannot be compared: --model then names its new place, the only way to resume
    (without --model the old path no longer loads). The same folder by another path (a symlink) is the same."""
    import os

    now = _model_named(model)
    if now == was:
        return False
    if os.path.isabs(was) and not os.path.exists(was):
        logging.getLogger(__name__).warning("the run started from --model %s, which no longer exists; continuing "
                                            "with --model %s as its new place", was, model)
        return False
    try:
        return not (os.path.isabs(now) and os.path.isabs(was) and os.path.samefile(now, was))
    except OSError:
        return True


def _listed(value) -> list:
    return value if isinstance(value, list) else [value]


def _resolved(value) -> list[str]:
    """Data paths as train_config.json records them (absolute_source), so the same data compares equal."""
    from polymodal.train.run_settings import absolute_source

    return [absolute_source(v) for v in _listed(value)]


def cmd_eval_retrieval(args) -> int:
    import numpy as np

    from polymodal.data.jsonl import counting_skipped
    from polymodal.eval.bootstrap import bootstrap_ci
    from polymodal.eval.caveats import (data_caveats, warn_of_certain_recall, warn_of_copies, warn_of_few,
                                        warn_of_shared_captions)
    from polymodal.eval.limit import check_limit
    from polymodal.eval.per_item import check_outputs, check_strict, write_items, write_page
    from polymodal.eval.retrieval import (check_finite_texts, encode_captions, encode_readable, not_finite,
                                          pairs_of_images, read_pairs, retrieval_metrics)
    from polymodal.registry import require_embedding

    check_limit(args.limit)
    check_outputs(args, args.pairs)
    with counting_skipped(args.split) as skipped:
        pairs = read_pairs(args.pairs, args.limit)
    check_strict(args, skipped[0])
    model = require_embedding(load_model(args, args.model), args.model)
    # said before the images are encoded
    caveats = data_caveats(args.model, pairs.images, skipped[0], args.split, args.limit)
    # a corrupt photo is left out, not fatal; the bar goes to stderr, the JSON line to stdout
    reasons: dict = {}  # why each unreadable photo could not be read: --out's error items
    image_emb, rows = encode_readable(model, pairs.images, ", ".join(args.pairs), progress=not args.quiet,
                                      reasons=reasons, names=pairs.image_names())
    # counted in the JSON line, as eval captions and eval vqa do; with the shard members read_pairs left out (and
    # apart, the photos the model embeds as NaN)
    nan = not_finite(reasons)
    unreadable = pairs.unreadable + len(pairs.images) - len(rows) - nan
    check_strict(args, 0, unreadable, nan)
    pairs = pairs_of_images(pairs, rows, reasons)
    warn_of_few(len(pairs.images), "photos", "recall")
    warn_of_copies(pairs.images)
    warn_of_shared_captions(pairs.captions, pairs.caption_image)
    warn_of_certain_recall(len(pairs.images), len(pairs.captions),
                           fewest_captions=int(np.bincount(pairs.caption_image, minlength=len(pairs.images)).min()))
    ranks: dict = {}
    text_emb = encode_captions(model, pairs.captions, progress=not args.quiet)
    check_finite_texts(text_emb, pairs.captions, "caption")
    metrics = retrieval_metrics(image_emb, text_emb, pairs.caption_image, ranks, top=3 if args.out or args.page else 0)
    if args.ci:  # photos resampled: t2i takes each photo's captions together
        groups = {"t2i": pairs.caption_image, "i2t": None}
        metrics |= {f"{side}_R@{k}_ci95": bootstrap_ci(ranks[side] <= k, groups[side])
                    for side in ("t2i", "i2t") for k in (1, 5, 10)}
    items: list = []
    if args.out or args.page:
        names = pairs.image_names()  # "<shard>#<member>" for a shard's photo, not its bytes
        # an unreadable photo and each of its captions get an error item (after the scored ones), as eval
        # zeroshot's, vqa's and captions' --out give one: the photo is in the items, with why, not missing
        items = ([{"query": "text", "caption": c, "image": names[i], "rank": int(r), "top": [names[j] for j in top]}
                  for c, i, r, top in zip(pairs.captions, pairs.caption_image, ranks["t2i"], ranks["t2i_top"])]
                 + [{"query": "text", "caption": c, "image": name, "error": why}
                    for name, captions, why in pairs.left_out for c in captions]
                 + [{"query": "image", "image": name, "rank": int(r)} for name, r in zip(names, ranks["i2t"])]
                 + [{"query": "image", "image": name, "error": why} for name, _, why in pairs.left_out])
    if args.out:  # the unreadable photos too (their file's or shard member's bytes), as eval zeroshot's items
        write_items(args.out, items, args.model, [*pairs.images, *(n for n, _, _ in pairs.left_out)],
                    names + [n for n, _, _ in pairs.left_out])
    if args.word_order:
        from polymodal.eval.word_order import word_order_accuracy

        # each image's first caption: one pass (np.unique's first indices; every image has a caption), not one per image
        _, first_rows = np.unique(pairs.caption_image, return_index=True)
        first = [pairs.captions[int(i)] for i in first_rows]
        own: list[list[str]] = [[] for _ in pairs.images]  # a scrambled copy that is one of them is no wrong caption
        for caption, i in zip(pairs.captions, pairs.caption_image):
            own[int(i)].append(caption)
        metrics |= word_order_accuracy(model, pairs.images, first, image_emb=image_emb, other_captions=own)
    line = {"model": args.model, "runtime": args.runtime, **how_it_ran(model, args), "images": len(pairs.images),
            "unreadable": unreadable, "not_finite": nan, **caveats, "captions": len(pairs.captions), **metrics}
    write_page(args, "retrieval", line, items)
    print(json.dumps(line))
    return 0


def cmd_eval_zeroshot(args) -> int:
    import numpy as np

    from polymodal.apps.templates import chosen_templates
    from polymodal.data.jsonl import counting_skipped
    from polymodal.eval.bootstrap import bootstrap_ci
    from polymodal.eval.caveats import data_caveats, warn_of_few
    from polymodal.eval.limit import check_limit, first_photos, warn_of_fewer_labels
    from polymodal.eval.per_item import check_outputs, check_strict, write_items, write_page
    from polymodal.eval.zeroshot import TEMPLATES, keep_candidates, read_classes, read_labelled_images, zeroshot_accuracy
    from polymodal.registry import require_embedding

    check_limit(args.limit)
    check_outputs(args, [args.labels_file] + ([args.classes] if args.classes else []))
    templates = chosen_templates(args) or TEMPLATES  # before the photos are read and the model loads
    classes = read_classes(args.classes) if args.classes else None
    with counting_skipped(args.split) as skipped:  # with candidates given, photos of one class are fine
        images, labels = read_labelled_images(args.labels_file, one_class=classes is not None)
    if classes:
        images, labels, outside = keep_candidates(images, labels, classes, args.labels_file)
        skipped[0] += outside
    if args.limit is not None:  # every label of the file stays a candidate: the same classes as the whole set's run
        classes, every = classes or sorted(set(labels)), labels
        rows = first_photos(images, args.limit)
        images, labels = [images[i] for i in rows], [labels[i] for i in rows]
        warn_of_fewer_labels(labels, every, args.limit)
    check_strict(args, skipped[0])
    # a model that cannot embed is refused before the caveats, as in eval retrieval and images (a warning that
    # captioner's figures are optimistic came first)
    model = require_embedding(load_model(args, args.model), args.model)
    caveats = data_caveats(args.model, set(images), skipped[0], args.split, args.limit)
    items: list = []
    metrics = zeroshot_accuracy(model, images, labels, templates, progress=not args.quiet, details=items,
                                classes=classes)
    check_strict(args, 0, metrics["unreadable"], metrics.get("not_finite", 0))  # (.get: a stand-in may not count)
    scored = [item for item in items if "rank" in item]  # not the unreadable photos' error items
    hits: dict = {}  # which class the model misses, as eval vqa's per_type: balanced_top1 says only that one does
    for item in scored:
        hits.setdefault(item["label"], []).append(item["rank"] <= 1)
    metrics |= {"per_class": {c: round(float(np.mean(h)), 4) for c, h in sorted(hits.items())},
                "per_class_count": {c: len(h) for c, h in sorted(hits.items())}}
    if args.ci:
        ranks, photos = np.array([item["rank"] for item in scored]), [item["image"] for item in scored]
        metrics |= {"top1_ci95": bootstrap_ci(ranks <= 1, photos), "top5_ci95": bootstrap_ci(ranks <= 5, photos),
                    "balanced_top1_ci95": bootstrap_ci(ranks <= 1, photos, by=[item["label"] for item in scored])}
    if args.out:
        write_items(args.out, items, args.model, images)
    warn_of_few(metrics["photos"], "photos", "accuracy")
    if metrics["classes"] <= 5:
        logging.getLogger(__name__).warning("top5 is 1.0 by construction with %d classes", metrics["classes"])
    line = {"model": args.model, "runtime": args.runtime, **how_it_ran(model, args), **caveats, **metrics}
    write_page(args, "zeroshot", line, items)
    print(json.dumps(line))
    return 0


def cmd_plot(args) -> int:
    from polymodal.train.plot import curves_summary, plot_run

    out = plot_run(args.run, args.out)
    print(json.dumps({"out": str(out), **curves_summary(args.run)}) if args.json else out)
    return 0


def add_parsers(sub) -> dict:
    """Adds train, eval and plot; returns {"train": ..., "eval": ...}, their sub-actions, for other tasks' parsers."""
    train = sub.add_parser("train", help="train or fine-tune on your own data").add_subparsers(dest="task", required=True)
    s = train.add_parser("contrastive", help="CLIP-style dual encoder on image-caption pairs (InfoNCE)")
    s.add_argument("--pairs", nargs="+", help="JSONL/CSV/Parquet file, caption folder or tar shards (several allowed)")
    s.add_argument("--val-pairs", nargs="+", help="validation pairs (default: split off --val-fraction by image)")
    s.add_argument("--out", help="run folder: model/, checkpoint.pt, metrics.jsonl, tensorboard/")
    s.add_argument("--model", help="'lite' (default: new heads over the lite towers) or a trained model folder")
    s.add_argument("--config", help=f"{CONFIG_HELP}; or the name of a recipe polymodal ships: default (the recipe "
                   "the built-in `default` was trained with)")
    add_run_options(s)
    add_recipe_flags(s, TRAIN_FLAGS, "polymodal.train.contrastive:ContrastiveRecipe", CONTRASTIVE_HELPS)
    s.set_defaults(func=cmd_train_contrastive)

    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="task", required=True)
    s = ev.add_parser("retrieval", help="text->image and image->text Recall@1/5/10 and median rank")
    s.add_argument("--pairs", nargs="+", required=True,
                   help="JSONL/CSV/Parquet file, caption folder or tar shards (several allowed: evaluated as one set)")
    s.add_argument("--model", default="default", help="built-in name, model folder or ONNX export (default: default)")
    s.add_argument("--word-order", action="store_true",
                   help="also: how often each photo's first caption beats 4 scrambled copies of it (order/swap, "
                        "order/trigrams, order/within, order/shuffle; chance 0.2 if the five scores were random, lower when "
                        "a model scores the copies alike: ties count as misses)")
    add_eval_options(s, ", each with all its captions (a quick look: recall among N photos comes out higher)")
    s.set_defaults(func=cmd_eval_retrieval)
    s = ev.add_parser("zeroshot", help="zero-shot top-1/top-5 accuracy over a JSONL of {image, label} or class "
                      "folders")
    s.add_argument("--labels-file", required=True, metavar="FILE",
                   help="a JSONL file of {\"image\": path relative to the file, \"label\"} rows, a CSV with "
                        "image,label columns, or a folder with one subfolder of photos per class (ImageNet's layout), "
                        "named as the class")
    s.add_argument("--model", default="default", help="built-in name, model folder or ONNX export (default: default)")
    add_template_options(s, "the mean of 4, see docs/evaluation.md")
    s.add_argument("--classes", metavar="FILE", help="the candidate classes, one per line (or a JSON list, or a "
                   "one-column .csv), e.g. all of a dataset's; default: the labels the file holds")
    add_eval_options(s, " (a quick look; the candidates stay every label of the file, or the --classes)")
    s.set_defaults(func=cmd_eval_zeroshot)

    s = sub.add_parser("plot", help="training curves of a run as a PNG")
    s.add_argument("run", help="a training run folder (the --out of polymodal train)")
    s.add_argument("--out", help="PNG path (default RUN/curves.png)")
    s.add_argument("--json", action="store_true", help="print one JSON object: the picture's path and the last and "
                   "the best epoch's figures")
    s.set_defaults(func=cmd_plot)
    return {"train": train, "eval": ev}
