"""`polymodal eval images`: image->image retrieval ("more like this") over labelled photos, a thin wrapper over
polymodal.eval.image_retrieval. Photos and labels are read as `eval zeroshot` reads them."""

from __future__ import annotations

import json

from polymodal.cli_options import add_eval_options, how_it_ran, load_model
from polymodal.errors import PolymodalError


def cmd_eval_images(args) -> int:
    import numpy as np

    from polymodal.data.jsonl import counting_skipped
    from polymodal.eval.bootstrap import bootstrap_ci
    from polymodal.eval.caveats import data_caveats, warn_of_copies, warn_of_few
    from polymodal.eval.image_retrieval import (COPIES_IN_I2I, first_label_each, image_retrieval_metrics,
                                                warn_of_certain_r_at_k, warn_of_singletons)
    from polymodal.eval.limit import check_limit, warn_of_fewer_labels
    from polymodal.eval.per_item import check_outputs, check_strict, write_items, write_page
    from polymodal.eval.retrieval import encode_readable, not_finite
    from polymodal.registry import require_embedding

    check_limit(args.limit)
    check_outputs(args, [args.labels_file])
    with counting_skipped(args.split) as skipped:  # (a labels file's rows, or photos beside the class folders)
        images, labels, repeats = first_label_each(*read_labelled(args.labels_file), args.labels_file)
    if args.limit is not None:  # each photo is on one row now
        one_label(labels[:args.limit], f"the first {args.limit} of {args.labels_file}", "raise --limit")
        warn_of_fewer_labels(labels[:args.limit], labels, args.limit)
        images, labels = images[:args.limit], labels[:args.limit]
    skipped = skipped[0] + repeats
    check_strict(args, skipped)
    model = require_embedding(load_model(args, args.model), args.model)
    caveats = data_caveats(args.model, images, skipped, args.split, args.limit)
    reasons: dict = {}  # why each unreadable photo could not be read: --out's error items
    emb, rows = encode_readable(model, images, str(args.labels_file), progress=not args.quiet, reasons=reasons)
    nan = not_finite(reasons)  # photos the model embeds as NaN: left out, counted apart from unreadable ones
    check_strict(args, 0, len(images) - len(rows) - nan, nan)
    kept, kept_labels = [images[i] for i in rows], [labels[i] for i in rows]
    warn_of_few(len(kept), "photos", "image retrieval")
    warn_of_singletons(kept_labels)
    warn_of_copies(kept, COPIES_IN_I2I)
    details: dict = {}
    metrics = image_retrieval_metrics(emb, kept_labels, details=details)
    scored = np.flatnonzero(details["scored"])
    warn_of_certain_r_at_k(int(details["positives"][scored].min()), len(kept))
    hits: dict = {}  # which label the model finds least, as eval zeroshot's per_class
    for i in scored:
        hits.setdefault(kept_labels[i], []).append(details["rank"][i] <= 1)
    metrics |= {"per_class": {c: round(float(np.mean(h)), 4) for c, h in sorted(hits.items())},
                "per_class_count": {c: len(h) for c, h in sorted(hits.items())}}
    if args.ci:  # one query per photo: resampled photo by photo
        metrics |= {"R@1_ci95": bootstrap_ci(details["rank"][scored] <= 1),
                    "MAP@R_ci95": bootstrap_ci(details["map_r"][scored])}
    names = [str(image) for image in kept]
    items = [{"image": names[i], "label": kept_labels[i], "nearest": names[details["nearest"][i]],
              "nearest_label": kept_labels[details["nearest"][i]], "rank": int(details["rank"][i]),
              "map_r": round(float(details["map_r"][i]), 4), "top": [names[j] for j in details["top"][i]]}
             if details["scored"][i] else
             {"image": names[i], "label": kept_labels[i], "skipped": "no other photo of its label"}
             for i in range(len(kept))]
    items += [{"image": str(images[i]), "label": labels[i], "error": why} for i, why in sorted(reasons.items())]
    if args.out:
        write_items(args.out, items, args.model, [*kept, *(images[i] for i in sorted(reasons))])
    line = {"model": args.model, "runtime": args.runtime, **how_it_ran(model, args), "images": len(kept),
            "unreadable": len(images) - len(rows) - nan, "not_finite": nan, **caveats, "classes": len(set(kept_labels)),
            **metrics}
    write_page(args, "images", line, items)
    print(json.dumps(line))
    return 0


def read_labelled(path) -> tuple[list, list[str]]:
    """`eval zeroshot --labels-file`'s photos and labels; fewer than two labels is refused (every photo a hit)."""
    from polymodal.eval.zeroshot import read_labelled_images

    images, labels = read_labelled_images(path, one_class=True, several_labels=False)
    one_label(labels, path)
    return images, labels


def one_label(labels: list[str], photos, fix: str = "label photos of at least two classes") -> None:
    if len(set(labels)) < 2:
        raise PolymodalError(f"every photo of {photos} has the label {labels[0]!r}: every other photo would be a hit; "
                             f"{fix}")


def add_parsers(sub, actions: dict) -> None:
    s = actions["eval"].add_parser("images", help="image->image retrieval ('more like this'): each labelled photo "
                                   "queries the others; R@1/5/10, R-Precision, MAP@R")
    s.add_argument("--labels-file", required=True, metavar="FILE",
                   help="a JSONL file of {\"image\": path relative to the file, \"label\"} rows, a CSV with "
                        "image,label columns, or a folder with one subfolder of photos per class, named as the class "
                        "(as eval zeroshot reads them)")
    s.add_argument("--model", default="default", help="built-in name, model folder or ONNX export (default: default)")
    add_eval_options(s, " (a quick look: each queries the other N-1, so recall comes out higher)")
    s.set_defaults(func=cmd_eval_images)
