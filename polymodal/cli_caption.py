"""`polymodal caption`, `polymodal train captioner`, `polymodal eval captions`: thin wrappers over
polymodal.models.captioner, train.captioning and eval.captions."""

from __future__ import annotations

import json
import sys

from polymodal.cli_options import (
    CONFIG_HELP, TRAIN_LOOP_FLAGS, add_precision, add_quiet, add_recipe_flags, add_run_options, add_runtime, how_it_ran,
)
from polymodal.errors import PolymodalError
from polymodal.eval.limit import add_limit
from polymodal.eval.per_item import add_item_options

# flag -> (recipe section, type), as polymodal.cli_train.recipe_settings reads them
CAPTION_HELPS = {
    "prefix_grid": "the photo's 7x7 grid average-pooled to N x N (plus its mean) as the caption's prefix tokens",
    "lora_rank": "rank of the LoRA adapters trained in the frozen text decoder's layers",
    "max_caption_tokens": "word pieces a caption is read to, [CLS] and [SEP] included; longer ones are cut",
    "batch_size": "captions per step",
    "val_images": "validation photos captioned after each epoch for BLEU and CIDEr-D (greedy decoding)",
}
CAPTION_FLAGS = {
    **TRAIN_LOOP_FLAGS,
    "prefix_grid": ("arch", int), "lora_rank": ("arch", int), "max_caption_tokens": ("arch", int),
    "batch_size": ("", int), "val_fraction": ("", float), "label_smoothing": ("", float), "val_images": ("", int),
    "split": ("", str), "val_split": ("", str),
}


def load_captioner_model(name: str, runtime: str = "auto", precision: str = "fp32"):
    import polymodal
    from polymodal.registry import require_captioner

    return require_captioner(polymodal.load(name, runtime=runtime, precision=precision), name)


def _check_decoding(args) -> dict:
    """The decoding flags, checked -> caption() keyword arguments."""
    from polymodal.models.beam_search import NO_REPEAT, check_decoding

    no_repeat = NO_REPEAT if args.no_repeat is None else args.no_repeat
    check_decoding(args.beam, args.max_tokens, no_repeat, getattr(args, "batch_size", 1), flags=True)
    decoding = {"beam": args.beam, "max_tokens": args.max_tokens}
    return decoding if args.no_repeat is None else {**decoding, "no_repeat": args.no_repeat}


def cmd_caption(args) -> int:
    from polymodal.eval.per_item import check_out, write_page
    from polymodal.models.inputs import each_or_error, none_could_be, unreadable_files

    decoding = _check_decoding(args)
    check_out(args.page, args.images, "--page", ".html")  # before the model loads, as eval's --page
    # missing or unreadable files are found from their headers before the model loads: all of them bad is one
    # error; otherwise each bad one is reported and skipped, as `classify` does (one damaged photo costs no others)
    errors = unreadable_files(args.images)
    if not args.json:  # said now, not after a long run (--json lists them in order)
        for path, reason in errors.items():
            print(f"polymodal: skipped {path}: {reason}", file=sys.stderr, flush=True)
    model = load_captioner_model(args.model, args.runtime, args.precision)
    # a batch at a time: memory stays flat over thousands of photos, and each batch's captions show as they come;
    # a photo damaged past its header fails its batch, which is then captioned one photo at a time
    captioned, items = 0, []
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        readable = [p for p in paths if p not in errors]
        said = each_or_error(lambda chunk: [(c,) for c in model.caption(chunk, **decoding)], readable, len(paths))
        damaged = {p: r for p, r in zip(readable, said) if isinstance(r, str)}
        errors.update(damaged)
        captions = {p: r[0] for p, r in zip(readable, said) if not isinstance(r, str)}
        for path in paths:
            items.append({"image": path, "caption": captions[path]} if path in captions else
                         {"image": path, "error": errors[path]})
            if path in captions:
                captioned += 1
                print(json.dumps({"image": path, "caption": captions[path]}) if args.json else
                      (f"{path}\t{captions[path]}" if len(args.images) > 1 else captions[path]), flush=True)
            elif args.json:
                print(json.dumps({"image": path, "error": errors[path]}), flush=True)
            elif path in damaged and len(args.images) > 1:  # one image alone gets the error below
                print(f"polymodal: skipped {path}: {errors[path]}", file=sys.stderr, flush=True)
    if not captioned:
        raise PolymodalError(none_could_be("read", [errors[p] for p in args.images]))
    write_page(args, "caption", {"model": args.model, "runtime": args.runtime, **decoding, "images": captioned,
                                 "unreadable": len(args.images) - captioned}, items)
    return 0


def cmd_train_captioner(args) -> int:
    from polymodal.cli_train import run_pairs_recipe
    from polymodal.train.captioning import CaptionRecipe, train_captioner

    return run_pairs_recipe(args, CAPTION_FLAGS, CaptionRecipe, train_captioner)


def cmd_eval_captions(args) -> int:
    from polymodal.data.jsonl import counting_skipped
    from polymodal.data.pairs import read_pair_sources
    from polymodal.eval.captions import MIN_CIDER_PHOTOS, evaluate_captions, scorers
    from polymodal.eval.caveats import data_caveats, warn_of_few
    from polymodal.eval.limit import check_limit
    from polymodal.eval.per_item import check_outputs, check_strict, refuse_ci, write_items, write_page

    decoding = _check_decoding(args)
    check_limit(args.limit)
    if args.examples < 0:  # (evaluate_captions checks it too, but only after the model has loaded)
        raise PolymodalError(f"--examples must be at least 0, got {args.examples}")
    refuse_ci(args, "BLEU and CIDEr-D are corpus scores, not means of per-photo scores that a bootstrap resamples")
    scorers()  # before the data is read and the model loads
    check_outputs(args, args.pairs)
    with counting_skipped(args.split) as skipped:
        pairs = read_pair_sources(args.pairs)
    check_strict(args, skipped[0])
    model = load_captioner_model(args.model, args.runtime, args.precision)
    images = pairs.images[:args.limit] if args.limit else pairs.images
    # said before the captioning, not after minutes of it
    caveats = data_caveats(args.model, images, skipped[0], args.split, args.limit)
    items: list = []
    result = evaluate_captions(model, pairs, limit=args.limit, examples=args.examples, details=items,
                               progress=not args.quiet, **decoding)
    check_strict(args, 0, result["unreadable"])
    if args.out:
        write_items(args.out, items, args.model, images)
    if result["images"] >= MIN_CIDER_PHOTOS:  # below, evaluate_captions said CIDEr-D was not scored at all
        warn_of_few(result["images"], "photos", "CIDEr-D (its word weights come from these photos' captions)")
    line = {"model": args.model, "runtime": args.runtime, **how_it_ran(model, args), **caveats, **result}
    write_page(args, "captions", line, items)
    print(json.dumps(line))
    return 0


def _decoding_options(s) -> None:
    s.add_argument("--beam", type=int, default=3, help="beam width (1 = greedy; default 3)")
    s.add_argument("--max-tokens", type=int, default=20, help="longest caption in word pieces (default 20)")
    s.add_argument("--no-repeat", type=int, default=None,
                   help="forbid repeating an n-gram of this many word pieces, or a piece twice in a row (default 3; "
                        "0 allows repeats, e.g. 'a man in a red shirt and a woman in a red shirt')")
    add_runtime(s, "onnx: caption with the model's `polymodal export onnx` folder through onnxruntime")
    add_precision(s, "; the decoder, most of a caption's time, stays fp32")  # the captioner's lite image tower


def add_parsers(sub, actions: dict) -> None:
    s = sub.add_parser("caption", help="write a caption for each image")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    s.add_argument("--model", default="captioner", help="built-in name or captioner folder (default: captioner)")
    _decoding_options(s)
    s.add_argument("--batch-size", type=int, default=16, help="photos decoded and captioned at a time (default 16)")
    s.add_argument("--json", action="store_true",
                   help="one {image, caption} object per line, in order ({image, error} for an unreadable photo)")
    s.add_argument("--page", metavar="FILE.html", help="also write a page to look at in a browser: each photo with "
                   "its caption, in order (the first 200; one file that opens offline)")
    s.set_defaults(func=cmd_caption)

    s = actions["train"].add_parser("captioner", help="image captioning model on image-caption pairs")
    s.add_argument("--pairs", nargs="+", help="JSONL/CSV/Parquet file, caption folder or tar shards (several allowed)")
    s.add_argument("--val-pairs", nargs="+", help="validation pairs (default: split off --val-fraction by image)")
    s.add_argument("--out", help="run folder: model/, checkpoint.pt, metrics.jsonl")
    s.add_argument("--model", help="'new' (default) or a captioner to continue from (e.g. --model captioner "
                                   "fine-tunes the shipped one on your own captions)")
    s.add_argument("--config", help=CONFIG_HELP)
    add_run_options(s)
    add_recipe_flags(s, CAPTION_FLAGS, "polymodal.train.captioning:CaptionRecipe", CAPTION_HELPS)
    s.set_defaults(func=cmd_train_captioner)

    s = actions["eval"].add_parser("captions", help="BLEU-1..4 and CIDEr-D of generated captions against references")
    s.add_argument("--pairs", nargs="+", required=True,
                   help="image-caption pairs, one or several sources: every caption of a photo is a reference")
    s.add_argument("--model", default="captioner", help="built-in name, captioner folder or ONNX export "
                                                         "(default: captioner)")
    add_limit(s, "caption")
    s.add_argument("--examples", type=int, default=5, help="photos whose captions the JSON line shows (default 5)")
    _decoding_options(s)
    add_quiet(s)
    add_item_options(s, ci=False)  # BLEU and CIDEr-D are corpus scores, not means of per-photo ones
    s.set_defaults(func=cmd_eval_captions)
